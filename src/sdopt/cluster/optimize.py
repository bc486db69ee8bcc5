"""`sdopt optimize --ray`: the candidates built in parallel as Ray tasks, then benched on nodes of one kind.

Builds write into the work folder, which every node must see at the same path (as bench artifacts):
a candidate quantized from another waits for that one's build; the distilled tiny decoder is made once,
before the candidates that use it. The bench is `sdopt bench --ray`'s (sdopt.cluster.bench), every job
asking for the same node kind, so the candidates' timings compare.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sdopt.bench.build import DISTILLED, OPTIMIZE_PARITY_ADVICE, build_one, tiny_decoder
from sdopt.bench.profiles import HardwareProfile
from sdopt.cluster.connect import cluster, ray_module
from sdopt.cluster.resources import task_options, why_unplaceable
from sdopt.errors import SdoptError


@dataclass(frozen=True)
class RayPlan:
    address: str | None = None
    kind: str | None = None  # a custom resource naming the node kind every job runs on (ray start --resources)
    cpus: float = 1.0  # CPUs each build and bench job holds

    def __post_init__(self):
        if not 0 < self.cpus < math.inf:  # before Ray starts: its ValueError for a negative or nan count was a traceback
            raise SdoptError(f"--cpus-per-job {self.cpus}: give the CPUs each build and bench job holds, a positive number")

    def profile(self, device: str) -> HardwareProfile:
        resources: dict[str, Any] = {"num_cpus": self.cpus}
        if self.kind:
            resources["custom"] = {self.kind: 1}
        return HardwareProfile(name="optimize", description="sdopt optimize --ray", device=device, precisions=[], backends=[], resources=resources)


@contextlib.contextmanager
def connected(plan: RayPlan) -> Iterator[dict]:
    local = {plan.kind: 1.0} if plan.kind else None
    with cluster(plan.address, local) as info:
        yield info


# --- on a node ---------------------------------------------------------------------------------------
def build_on_node(spec: dict, source: str, work: str, height: int, width: int, device: str, parent: dict | None, *before: dict) -> dict:
    """One candidate's build (a Ray task); ``parent``: the build it quantizes, ``before``: the tiny decoder's."""
    for earlier in (parent, *before):
        if earlier is not None and earlier.get("error"):
            return {"error": f"{earlier['name']} was not built: {earlier['error']}"}
    built = {spec["from"]: parent["path"]} if spec.get("from") else {}
    try:
        return {"name": spec["name"], "path": build_one(spec, Path(source), Path(work), height, width, device, built,
                                                        parity_advice=OPTIMIZE_PARITY_ADVICE)}
    except SdoptError as exc:
        return {"name": spec["name"], "error": str(exc)}


def distill_on_node(spec: dict, source: str, work: str, height: int, width: int) -> dict:
    try:
        return {"name": "tiny-decoder", "path": tiny_decoder(spec, Path(source), Path(work), height, width)}
    except SdoptError as exc:
        return {"name": "tiny-decoder", "error": str(exc)}


# --- on the driver -----------------------------------------------------------------------------------
def build_all(plan: RayPlan, pool: list, source: Path, work: Path, settings, budget_minutes: float | None,
              say: Callable[[str], None]) -> tuple[dict[str, str], dict[str, str]]:
    """Every candidate built on the cluster at once (dependencies waited for by Ray): (built, not_built)."""
    ray = ray_module()
    options = task_options(plan.profile(settings.device))
    why = why_unplaceable(options, ray.nodes(), "sdopt optimize's builds")
    if why:
        raise SdoptError(why)
    build = ray.remote(max_retries=1)(build_on_node).options(**options)
    distill = ray.remote(max_retries=1)(distill_on_node).options(**options)
    size = (settings.height, settings.width)
    refs: dict[str, Any] = {}
    distilled = None
    for candidate in pool:
        spec = candidate.spec
        before = []
        if spec.get("vae_decoder") == DISTILLED:
            distilled = distilled or distill.remote(spec, str(source), str(work), *size)
            before.append(distilled)
        parent = refs.get(spec["from"]) if spec.get("from") else None
        refs[candidate.name] = build.remote(spec, str(source), str(work), *size, settings.device, parent, *before)
    say(f"== building {len(refs)} candidates on Ray ({', '.join(f'{k}={v}' for k, v in options.items())} each)")
    deadline = None if budget_minutes is None else time.monotonic() + budget_minutes * 60
    built, not_built = {}, {}
    pending = dict(refs)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = ray.wait(list(pending.values()), num_returns=1, timeout=left)
        if not done:  # the budget ran out: what is not built by now is not waited for
            for name, ref in pending.items():
                ray.cancel(ref, force=True)
                not_built[name] = f"the --budget-minutes {budget_minutes:g} ran out before it was built"
            break
        name = next(n for n, r in pending.items() if r == done[0])
        del pending[name]
        try:
            answer = ray.get(done[0])
        except ray.exceptions.RayError as exc:
            answer = {"error": f"its Ray task failed twice: {type(exc).__name__}"}
        if answer.get("error"):
            not_built[name] = answer["error"]
            say(f"   not built: {name}: {answer['error']}")
        else:
            built[name] = answer["path"]
            say(f"   built {name}")
    return {c.name: built[c.name] for c in pool if c.name in built}, not_built


def bench(plan: RayPlan, artifacts: list[str], source: Path, out: Path, settings, progress: bool) -> dict:
    """The candidates' bench, every job on a node of the plan's kind (one report, as a local run writes it)."""
    from sdopt.bench.artifacts import check_static_shapes, collect
    from sdopt.cluster.bench import ProfileRun, run_matrix

    entries = collect(artifacts, str(source))
    check_static_shapes(entries, settings)
    profile = plan.profile(settings.device)
    return run_matrix([ProfileRun(profile, entries, settings, out)], address=None, progress=progress)[profile.name]
