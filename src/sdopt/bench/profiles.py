"""Hardware profiles: what a machine kind is, what to run on it, and the gate's thresholds.

Profiles are TOML files shipped in the package (``src/sdopt/profiles/``), in a
``profiles/`` folder of your own (or $SDOPT_PROFILES), or any path given with
--profile FILE. See src/sdopt/profiles/README.md for the fields.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, command_line, did_you_mean

# Defaults for a bench run when neither the profile nor the command line says otherwise.
BENCH_DEFAULTS: dict[str, Any] = {
    "steps": 4,
    "height": 256,
    "width": 256,
    "warmup": 1,
    "runs": 3,
    "seeds": [0, 1],
    "guidance_scale": 7.5,
    "scheduler": "euler",
    "judge": "auto",
    "prompts": [
        "a watercolor painting of a lighthouse at dawn",
        "a photo of a red fox in fresh snow, telephoto",
    ],
}


# The [bench] settings a report records in its request (what its images and timings were made of).
REQUEST_SETTINGS = ("steps", "height", "width", "seeds", "prompts", "guidance_scale", "scheduler")


@dataclass
class HardwareProfile:
    name: str
    description: str
    device: str
    precisions: list[str]
    backends: list[str]
    bench: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # what a full profile run builds
    gate: dict[str, Any] = field(default_factory=dict)  # metric -> rule(s), see bench/gate.py
    requires_isa: list[str] = field(default_factory=list)  # CPU features this machine kind has
    # Backend -> run settings ([run.openvino]: OpenVINO properties; [run.onnxruntime]: session options),
    # passed to every artifact of that backend as the run_settings load option.
    run: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What one bench job of this profile asks a Ray cluster for ([resources]: sdopt.cluster.resources).
    resources: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def mismatch(self, machine: dict[str, Any]) -> str | None:
        """Why this machine is not of the profile's kind, or None."""
        have = set(machine.get("cpu", {}).get("isa", []))
        missing = [f for f in self.requires_isa if f not in have]
        if missing:
            return f"profile {self.name} expects CPU features {', '.join(missing)}, which this machine lacks"
        if self.device == "cuda" and not machine.get("gpus"):
            return f"profile {self.name} is for a CUDA GPU, and this machine shows none"
        return None

    def benched_otherwise(self, request: dict[str, Any]) -> list[str]:
        """The [bench] settings this profile sets that a report's request does not have, as "steps 4 (the profile's 20)":
        its [gate] floors were drawn on benches of these (cpu-shapes' adherence floor on 20 steps of 8 prompts)."""
        def said(value: Any) -> str:
            if isinstance(value, list) and value and isinstance(value[0], str):
                return f"{len(value)} prompt{'s' * (len(value) != 1)}"  # not each one's words
            return json.dumps(value)[:60]

        return [f"{key} {said(request.get(key))} (the profile's {said(self.bench[key])})" for key in REQUEST_SETTINGS
                if key in self.bench and request.get(key) != self.bench[key]]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def search_path() -> list[Path]:
    """Where --profile NAME looks: $SDOPT_PROFILES, ./profiles (your own), then the ones sdopt ships (package data)."""
    from importlib import resources

    paths = [Path(p) for p in os.environ.get("SDOPT_PROFILES", "").split(os.pathsep) if p]
    paths.append(Path.cwd() / "profiles")
    paths.append(Path(str(resources.files("sdopt") / "profiles")))  # src/sdopt/profiles in a checkout, site-packages when installed
    return [p for i, p in enumerate(paths) if p.is_dir() and p not in paths[:i]]


def available_profiles() -> list[str]:
    return sorted({p.stem for folder in search_path() for p in folder.glob("*.toml") if p.is_file()})


def load_profile(name_or_path: str) -> HardwareProfile:
    """A profile by name (profiles/NAME.toml on the search path) or by the path of its .toml file."""
    path = Path(name_or_path)
    if path.suffix.lower() == ".toml" or len(path.parts) > 1:  # a path (x.TOML too): never looked up as a name
        if not path.is_file():
            raise SdoptError(f"profile file {path} {'is a folder' if path.is_dir() else 'does not exist'}: give the path of a "
                             f".toml profile, or a profile's name (known profiles: {', '.join(available_profiles()) or 'none found'})")
    else:
        found = [folder / f"{name_or_path}.toml" for folder in search_path() if (folder / f"{name_or_path}.toml").is_file()]
        if not found:
            known = available_profiles()  # listed only for the error: a found profile needs no glob of every folder
            raise SdoptError(f"unknown profile '{name_or_path}'{did_you_mean(name_or_path, known)}; "
                             f"known profiles: {', '.join(known) or 'none found'} (or give the path of a .toml file)")
        path = found[0]
    from sdopt.file_reading import read_toml

    data = read_toml(path, what="profile")
    missing = [k for k in ("name", "device") if k not in data]
    if missing:
        raise SdoptError(f"{path} lacks {', '.join(missing)}: every profile names itself and its device")
    _known_keys(data, PROFILE_KEYS, path, "the profile")
    _check_kinds(data, path)
    _known_keys(data.get("bench", {}), BENCH_KEYS, path, "[bench]")
    _check_bench_lists(data.get("bench", {}), path)
    _check_bench_values(data.get("bench", {}), path)
    for index, entry in enumerate(data.get("artifacts", [])):
        if not isinstance(entry, dict) or "name" not in entry:
            raise SdoptError(f"{path}: [[artifacts]] entry {index + 1} has no name: every entry is a table with name = \"...\"")
        _known_keys(entry, ARTIFACT_KEYS, path, f"[[artifacts]] {entry['name']!r}")
        _check_recipe_options(entry, path)
        if "distill" in entry:  # checked now, not after the entries built before it (sdopt.decoder.distill)
            from sdopt.decoder.distill import DistillSettings

            DistillSettings.from_table(entry["distill"], f"{path}: [[artifacts]] {entry['name']!r}")
    _check_entries(data.get("artifacts", []), path, str(data["device"]))
    _check_isa(data.get("requires_isa", []), path)
    _check_gate(data.get("gate"), path)
    return HardwareProfile(
        name=data["name"],
        description=data.get("description", ""),
        device=data["device"],
        precisions=list(data.get("precisions", [])),
        backends=list(data.get("backends", [])),
        bench=dict(data.get("bench", {})),
        artifacts=list(data.get("artifacts", [])),
        gate=dict(data.get("gate", {})),
        requires_isa=list(data.get("requires_isa", [])),
        run=_run_tables(data.get("run", {}), path, str(data["device"])),
        resources=_resources_table(data.get("resources", {}), path),
        path=str(path),
    )


# What a profile may say (src/sdopt/profiles/README.md): a key outside these is a typo that would be silently ignored
# ([bench] step = 1 benching 4 steps; an artifact's quantise = "int8" benching the checkpoint itself).
PROFILE_KEYS = {"name", "description", "device", "precisions", "backends", "bench", "artifacts", "gate", "requires_isa", "run", "resources"}
BENCH_KEYS = {*BENCH_DEFAULTS, "max_seconds"}
ARTIFACT_KEYS = {"name", "reference", "backend", "precision", "export", "quantize", "from", "static", "vae_decoder", "distill",
                 "guidance_end", "compile", "options", "components"}


def _known_keys(table: Any, known: set[str], path: Path, where: str) -> None:
    if not isinstance(table, dict):
        raise SdoptError(f"{path}: {where} must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise SdoptError(f"{path}: {where} has no key {unknown[0]!r}{did_you_mean(unknown[0], known, quoted=True)}"
                         f"; its keys are {', '.join(sorted(known))} (src/sdopt/profiles/README.md)")


# The kind of each top-level value: a string where a list is meant (precisions = "fp32") would be read as its letters,
# and a number where a table or list is meant failed with a traceback.
PROFILE_KINDS = {"name": (str, 'name = "my-box"'), "description": (str, 'description = "..."'), "device": (str, 'device = "cpu"'),
                 "precisions": (list, 'precisions = ["fp32", "int8"]'), "backends": (list, 'backends = ["torch", "onnxruntime"]'),
                 "requires_isa": (list, 'requires_isa = ["avx512f"]'), "artifacts": (list, '[[artifacts]] name = "..."'),
                 "gate": (dict, '[gate] "latency.median" = "+10%"')}
PROFILE_DEVICES = ("cpu", "cuda")


def _check_kinds(data: dict[str, Any], path: Path) -> None:
    for key, (kind, example) in PROFILE_KINDS.items():
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is list and key != "artifacts" and not all(isinstance(v, str) for v in value)):
            raise SdoptError(f"{path}: {key} = {value!r}: the wrong kind of value; for example {example} (src/sdopt/profiles/README.md)")
    if data["device"] not in PROFILE_DEVICES:
        raise SdoptError(f"{path}: device = {data['device']!r}: a profile's device is {' or '.join(PROFILE_DEVICES)}")


def _check_bench_lists(bench: dict[str, Any], path: Path) -> None:
    """[bench] prompts and seeds are lists (the other values are checked as a request's): prompts = "a fox" benched each
    of its letters as a prompt, and seeds = 3 failed every artifact."""
    for key, kind, example in (("prompts", str, 'prompts = ["a lighthouse at dawn"]'), ("seeds", int, "seeds = [0, 1]")):
        value = bench.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
            raise SdoptError(f"{path}: [bench] {key} = {value!r}: give a list, such as {example}")


def _check_bench_values(bench: dict[str, Any], path: Path) -> None:
    """Each [bench] value, named by its key in this file (the command line's over them are checked again by BenchSettings):
    steps = 0 or runs = 0 was refused as a request's steps=0 or as flags never typed (--runs 0 / --warmup 0), seeds = []
    with "give --seeds 0,1,2", runs = 1.5 was taken, and max_seconds = "600" was a TypeError traceback."""
    from sdopt.request import GenerateRequest
    from sdopt.runtime.schedulers import check_scheduler

    for key in ("prompts", "seeds"):
        if bench.get(key) == []:
            raise SdoptError(f"{path}: [bench] {key} = []: give one or more, or leave {key} out for the defaults")
    try:
        for key in ("steps", "height", "width", "guidance_scale"):
            if key in bench:
                with command_line(False):  # named as this file's key (steps=0), not as bench's flag
                    GenerateRequest(prompt="a fox", **{key: bench[key]}).validate()
        check_scheduler(bench.get("scheduler"))
        if "judge" in bench:  # the name only: whether it can read the prompts depends on --prompts, checked with the settings
            from sdopt.bench.grounding import CHOICES

            if bench["judge"] not in CHOICES:
                raise SdoptError(f"judge = {bench['judge']!r}: give one of {', '.join(CHOICES)}")
    except SdoptError as exc:
        raise SdoptError(f"{path}: [bench] {exc}") from None
    for key, low in (("warmup", 0), ("runs", 1)):
        value = bench.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise SdoptError(f"{path}: [bench] {key} = {value!r}: give a whole number, {low} or more, such as {key} = {BENCH_DEFAULTS[key]}")
    budget = bench.get("max_seconds")
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget < math.inf):
        raise SdoptError(f"{path}: [bench] max_seconds = {budget!r}: give each artifact's time budget in seconds, a positive number, "
                         "such as max_seconds = 900")


def _check_isa(features: list[str], path: Path) -> None:
    """requires_isa names features the bench records of a machine (sdopt.machine): any other name (lscpu's
    "avx512vnni" for "avx512_vnni", a feature not recorded) is never in a report, so every run was warned "this
    machine lacks" it, on the very machine the profile was written for."""
    from sdopt.machine import RECORDED_ISA

    unknown = [f for f in features if f not in RECORDED_ISA]
    if unknown:
        raise SdoptError(f"{path}: requires_isa names {', '.join(repr(f) for f in unknown)}"
                         f"{did_you_mean(unknown[0], list(RECORDED_ISA), quoted=True)}: the features a report records are {', '.join(RECORDED_ISA)}")


def _check_gate(table: Any, path: Path) -> None:
    """The [gate] rules parsed when the profile is read: a typo (an unknown metric, "+10" for "+10%" the wrong way) was
    found only by `sdopt gate`, after the whole bench."""
    if table is None:
        return
    from sdopt.bench.rules import parse_rules

    try:
        parse_rules(table)
    except SdoptError as exc:
        raise SdoptError(f"{path}: [gate]: {exc}") from None


# Keys that mean something on one kind of entry only (src/sdopt/profiles/README.md); elsewhere the build ignored them:
# static = true on a quantize entry benched the dynamic source's shapes, from = on an export entry exported the checkpoint.
_ENTRY_ONLY = {"static": ("export",), "vae_decoder": ("export",), "components": ("quantize",), "from": ("quantize", "guidance_end"),
               "compile": (None,)}  # None: the checkpoint's entry (no export, quantize or guidance_end)
_ENTRY_HINTS = {"static": "a quantize entry keeps its source's shapes: quantize from = an export entry with static = true",
                "vae_decoder": "give it to the export entry the others start from",
                "components": "an export converts every component",
                "from": "an export starts from the checkpoint (the --build-from model)",
                "compile": "torch.compile applies to the checkpoint run by torch"}


def _check_entry_keys(entry: dict[str, Any], kind: str | None, device: str) -> None:
    """Each key on an entry of a kind that reads it (``kind``: its recipe, export, quantize or guidance_end; None: the
    checkpoint's), with a value of the right kind (errors are prefixed by the caller)."""
    for key, kinds in _ENTRY_ONLY.items():
        if key in entry and kind not in kinds:
            on = f"a {kind} entry" if kind else "the checkpoint's entry"
            raise SdoptError(f"{key} is not read on {on}: {_ENTRY_HINTS[key]}")
    if "static" in entry and not isinstance(entry["static"], bool):
        raise SdoptError(f"static = {entry['static']!r}: write static = true (built for the [bench] size) or leave it out")
    if "vae_decoder" in entry and not (isinstance(entry["vae_decoder"], str) and entry["vae_decoder"]):
        raise SdoptError(f"vae_decoder = {entry['vae_decoder']!r}: give a tiny decoder's folder, or \"distilled\"")
    if "distill" in entry and entry.get("vae_decoder") != "distilled":
        raise SdoptError("distill is read only with vae_decoder = \"distilled\" (it says how the tiny decoder is distilled)")
    if "components" in entry:
        from sdopt.quant.run import component_choices, is_component_name

        names = entry["components"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise SdoptError(f"components = {names!r}: give a list of component names, such as components = [\"unet\", \"vae_decoder\"]")
        unknown = [n for n in names if not is_component_name(n)]
        if unknown:
            raise SdoptError(f"components names {', '.join(repr(n) for n in unknown)}: choose from {', '.join(component_choices())}")
    if "compile" in entry:
        from sdopt.runtime.compiled import compile_setting

        compile_setting(entry["compile"], device)


def _check_entries(entries: list[dict[str, Any]], path: Path, device: str) -> None:
    """What the [[artifacts]] entries name, checked when the profile is read, before anything is built: a typo in an
    export target, scheme or backend was found only when the bench reached its entry (built after the others, then
    "not built" and exit 1 after the whole bench); a name given twice built the second entry into the first's folder
    over it; a second reference = true was dropped from the run without a word; a checkpoint entry's backend other
    than torch was ignored (the torch checkpoint benched under its name); a name such as "../x" built outside --work."""
    from sdopt.export import EXPORTERS
    from sdopt.quant import QUANTIZERS
    from sdopt.request import GenerateRequest
    from sdopt.quant.schemes import check_scheme
    from sdopt.runtime.backends import BACKENDS

    seen: list[str] = []
    references: list[str] = []
    for entry in entries:
        name = entry["name"]
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise SdoptError(f"{path}: [[artifacts]] name = {name!r}: give a name that can be a folder's (the artifact is built in "
                             "WORK/NAME), such as name = \"onnx-fp32\"")
        where = f"{path}: [[artifacts]] {name!r}"
        if name in seen:
            raise SdoptError(f"{where} is listed twice: give each entry a name of its own (each is built in WORK/NAME and is a report row)")
        if not isinstance(entry.get("reference", False), bool):
            raise SdoptError(f"{where}: reference = {entry['reference']!r}: write reference = true on the one entry the others are "
                             "measured against, and leave it out elsewhere")
        if entry.get("reference"):
            references.append(name)
        if "from" in entry and entry["from"] not in seen:
            raise SdoptError(f"{where}: from = {entry['from']!r} names no entry listed before it: list that entry first"
                             + (f" (listed before: {', '.join(seen)})" if seen else ""))
        seen.append(name)
        recipes = [k for k in ("export", "quantize", "guidance_end") if k in entry]
        if len(recipes) > 1:
            raise SdoptError(f"{where} has both {recipes[0]} and {recipes[1]}: an entry is one artifact; list one entry for each, "
                             f"the second with from = {name!r}")
        try:
            _check_entry_keys(entry, recipes[0] if recipes else None, device)
            if "guidance_end" in entry:  # 2.0 or "0.5" was found when the bench reached the entry, after building the others
                with command_line(False):  # the entry's key (guidance_end=2.0), not a flag
                    GenerateRequest(prompt="a fox", guidance_end=entry["guidance_end"]).validate()
            if "export" in entry:
                exporter = EXPORTERS.lookup(entry["export"])
                if entry.get("precision", "fp32") not in exporter.precisions:
                    raise SdoptError(f"precision = {entry['precision']!r}: export = {exporter.name!r} builds "
                                     f"{', '.join(exporter.precisions)}")
            elif "quantize" in entry:
                check_scheme(entry["quantize"])
                if entry.get("backend") is not None:
                    QUANTIZERS.lookup(entry["backend"])
            elif not recipes:  # the checkpoint itself, run by torch
                if entry.get("backend", "torch") != "torch":
                    instead = (f'for {entry["backend"]}, write export = "{entry["backend"]}"' if entry["backend"] in EXPORTERS
                               else f"write backend = \"torch\" or leave it out (another backend's artifact is an export: {', '.join(EXPORTERS)})")
                    raise SdoptError(f"backend = {entry['backend']!r}: an entry without export or quantize is the checkpoint, run by "
                                     f"torch; {instead}")
                precisions = sorted({p for kind in BACKENDS["torch"].precisions.values() for p in kind})
                if entry.get("precision", "fp32") not in precisions:
                    raise SdoptError(f"precision = {entry['precision']!r}: the checkpoint runs in {', '.join(precisions)}")
        except SdoptError as exc:
            raise SdoptError(f"{where}: {exc}") from None
    if len(references) > 1:
        raise SdoptError(f"{path}: [[artifacts]] {', '.join(repr(r) for r in references)} are each reference = true: "
                         "mark one, the others are measured against it")


def _check_recipe_options(entry: dict[str, Any], path: Path) -> None:
    """An entry's ``options`` are ones its exporter (or its named quantizer) takes: refused when the profile is read,
    not when the bench reaches the entry after building the others (a quantizer chosen by scheme is checked then)."""
    options = entry.get("options")
    if not options:
        return
    if not isinstance(options, dict):
        raise SdoptError(f"{path}: [[artifacts]] {entry['name']!r}: options is a table, such as options = {{ deep_cache = 2 }}")
    try:
        with command_line():  # named as the flags (--to onnx ... --deep-cache), whoever reads the profile, as before
            if "export" in entry:
                from sdopt.export import EXPORTERS

                EXPORTERS.lookup(entry["export"]).check_options(options, EXPORTERS)
            elif "quantize" in entry and entry.get("backend"):
                from sdopt.quant import QUANTIZERS

                QUANTIZERS.lookup(entry["backend"]).check_options(options, QUANTIZERS)
    except SdoptError as exc:
        raise SdoptError(f"{path}: [[artifacts]] {entry['name']!r}: {exc}") from None


def _run_tables(run: Any, path: Path, device: str) -> dict[str, dict[str, Any]]:
    from sdopt.runtime.backends import BACKENDS

    if not isinstance(run, dict) or not all(isinstance(v, dict) for v in run.values()):
        raise SdoptError(f"{path}: [run] holds one table per backend, such as [run.openvino] PERFORMANCE_HINT = \"LATENCY\"")
    unknown = [b for b in run if b not in BACKENDS or "run_settings" not in BACKENDS[b].options]
    if unknown:
        takers = [b for b, backend in BACKENDS.items() if "run_settings" in backend.options]
        raise SdoptError(f"{path}: [run.{unknown[0]}]: run settings apply to {', '.join(takers)}")
    for backend, settings in run.items():
        known = BACKENDS[backend].run_settings
        if known is not None:
            _known_keys(settings, set(known), path, f"[run.{backend}]")
        if BACKENDS[backend].available():  # the values (and, where it takes any, the names) by the backend itself
            import importlib

            try:
                importlib.import_module(BACKENDS[backend].module).check_run_settings(settings, device)
            except SdoptError as exc:
                raise SdoptError(f"{path}: [run.{backend}]: {exc}") from None
    return {backend: dict(settings) for backend, settings in run.items()}


RESOURCE_KEYS = {"num_cpus": (int, float), "num_gpus": (int, float), "accelerator_type": str, "custom": dict}


def _resources_table(table: Any, path: Path) -> dict[str, Any]:
    """[resources]: num_cpus, num_gpus, accelerator_type, custom = {NAME = AMOUNT}; checked here, used by sdopt.cluster."""
    example = '[resources] num_cpus = 2, custom = {"cpu-avx512" = 1}'
    if not isinstance(table, dict):
        raise SdoptError(f"{path}: [resources] is a table, such as {example}")
    for key, value in table.items():
        kinds = RESOURCE_KEYS.get(key)
        if kinds is None:
            raise SdoptError(f"{path}: [resources] {key}: unknown; the keys are {', '.join(RESOURCE_KEYS)}")
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise SdoptError(f"{path}: [resources] {key} = {value!r}: the wrong kind of value; for example {example}")
        if key.startswith("num_") and not 0 <= value < math.inf:  # nan and inf too: Ray's own ValueError, a traceback
            raise SdoptError(f"{path}: [resources] {key} = {value}: give a count, 0 or more")
    custom = table.get("custom", {})
    bad = [k for k, v in custom.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < math.inf]
    if bad:
        raise SdoptError(f"{path}: [resources] custom.{bad[0]}: give a positive amount, such as custom = {{\"{bad[0]}\" = 1}}")
    return dict(table)
