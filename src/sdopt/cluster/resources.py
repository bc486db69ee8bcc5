"""A hardware profile's ``[resources]`` as the options of a Ray task, and whether any node can take it.

    [resources]
    num_cpus = 2                    # cores one bench job holds (default 1)
    num_gpus = 1                    # default: 1 for a CUDA profile, else 0
    accelerator_type = "H100"       # Ray's accelerator type (nodes report it for their GPUs)
    custom = {"cpu-avx512" = 1}     # custom resources the nodes of this kind were started with

A node kind is named by a custom resource (``ray start --resources '{"cpu-avx512": 1}'``) or by
its accelerator type. Starting each node with 1 of its kind's resource, and asking for 1 per job,
runs one bench job per node at a time, so that jobs do not share cores and spoil each other's timings.
"""

from __future__ import annotations

from typing import Any

from sdopt.bench.profiles import HardwareProfile


def task_options(profile: HardwareProfile | None) -> dict[str, Any]:
    if profile is None:
        return {"num_cpus": 1}
    r = profile.resources
    options: dict[str, Any] = {
        "num_cpus": r.get("num_cpus", 1),
        "num_gpus": r.get("num_gpus", 1 if profile.device.startswith("cuda") else 0),
    }
    if r.get("custom"):
        options["resources"] = dict(r["custom"])
    if r.get("accelerator_type"):
        options["accelerator_type"] = r["accelerator_type"]
    return options


def demand(options: dict[str, Any]) -> dict[str, float]:
    """The options as Ray's resource names and amounts (what a node must have free to take the task)."""
    need = {"CPU": float(options.get("num_cpus", 1)), "GPU": float(options.get("num_gpus", 0))}
    need.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    if options.get("accelerator_type"):
        need[f"accelerator_type:{options['accelerator_type']}"] = 0.001  # how Ray places accelerator_type
    return {k: v for k, v in need.items() if v > 0}


def why_unplaceable(options: dict[str, Any], nodes: list[dict[str, Any]], what: str) -> str | None:
    """None when some alive node has every resource the task asks for; else why not, naming the fix.
    Ray would queue such a task for ever; sdopt reports it at once instead."""
    need = demand(options)
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(all(have.get(k, 0) >= v for k, v in need.items()) for have in alive):
        return None
    lacking = sorted({k for k, v in need.items() if not any(have.get(k, 0) >= v for have in alive)})
    return (f"no node of the Ray cluster can run {what}: it asks for {', '.join(f'{k}={need[k]:g}' for k in lacking)}, "
            f"which no node offers (start a node of this kind with `ray start --address ... --resources '{{\"NAME\": 1}}'`, "
            "or change the profile's [resources]; docs/ray.md)")


def local_resources(profiles: list[HardwareProfile]) -> dict[str, float]:
    """What a local cluster is started with so that every profile's jobs can run on this one machine:
    one unit of each custom resource (one job of each kind at a time) and each accelerator type asked for."""
    have: dict[str, float] = {}
    for profile in profiles:
        options = task_options(profile)
        for name in options.get("resources") or {}:
            have[name] = max(have.get(name, 0.0), float(options["resources"][name]))
    return have
