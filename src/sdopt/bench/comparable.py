"""What two bench reports share, for `sdopt gate` to compare them: a report read and checked whole, the settings and
reference two reports must share (else IncomparableReports, exit 2), and the notes on what the gate does not compare
(an artifact added, renamed, failed in the baseline or gone; speed across CPU kinds), and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdopt.bench.assemble import REPORT_SCHEMA
from sdopt.bench.rules import Rule
from sdopt.errors import SdoptError
from sdopt.file_reading import read_json
from sdopt.hardware import ONEDNN_CAP_VARIABLES, cap_level

# Fields two reports must share to be compared, as dotted paths into report.json.
COMPARABLE_FIELDS = (
    "schema",
    "schema_version",
    "request.prompts",
    "request.seeds",
    "request.steps",
    "request.height",
    "request.width",
    "request.guidance_scale",
    "request.scheduler",
    "request.eta",  # the next four only in reports that set them (a bench of ddim/tcd with eta, of img2img or inpainting)
    "request.init_image",
    "request.mask_image",
    "request.strength",
    "model.fingerprint",
    # A CUDA bench against a CPU baseline compared latency ratios of other machines' kinds whenever the host CPUs'
    # extensions matched (and peak memory of other kinds: the allocator's against RSS)
    "settings.device",
)
# What makes the reference the same yardstick in two reports, as its row records it: the same files (artifact_id), run
# the same way. Its name is not: a profile names it, else the checkpoint's folder, which differs between machines.
REFERENCE_IDENTITY = ("artifact_id", "backend", "precision", "quantization", "compile", "guidance_end", "cache_interval", "replaced")
# Where both reports record them, the model and the reference's files are compared blind to the library versions that
# wrote their configs (sdopt.manifest.identity_of): the fingerprint and artifact_id change with a Transformers upgrade.
VERSION_BLIND = {"model.fingerprint": "model.identity", "artifact_id": "identity"}


class IncomparableReports(SdoptError):
    exit_code = 2  # the gate's EXIT_INCOMPARABLE


class NotABenchReport(SdoptError):
    """A file given as a report that is no complete `sdopt bench` report (exit 2, as every input error)."""

    exit_code = 2  # the gate's EXIT_INCOMPARABLE


def read_report(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():  # the bench's -o folder: read_json called it "missing", though it is right there
        hint = f"give {path / 'report.json'}" if (path / "report.json").is_file() else "give a report.json written by `sdopt bench`"
        raise SdoptError(f"report {path} is a folder: {hint}")
    report = read_json(path, what="report", missing="give a report.json written by `sdopt bench`")
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        schema = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise NotABenchReport(f"{path} is not an sdopt bench report (its schema is {schema!r})")
    check_shape(report, path)
    return report


def check_shape(report: dict, where: Any) -> None:
    """What the gate reads must be there and of the right kind: else exit 2, never a traceback or a pass."""
    artifacts = report.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts or not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in artifacts):
        raise NotABenchReport(f"{where} has no list of artifacts with names: it is not a complete bench report; bench again")
    names = [a["name"] for a in artifacts]
    if len(set(names)) != len(names):
        raise NotABenchReport(f"{where} names an artifact twice: it is not a report `sdopt bench` wrote; bench again")
    if report.get("reference") not in names:
        raise NotABenchReport(f"{where}: its reference {report.get('reference')!r} is not among its artifacts; bench again")


def field_at(data: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def check_comparable(current: dict, baseline: dict) -> None:
    for name in COMPARABLE_FIELDS:
        name = _version_blind(name, current, baseline, field_at)
        a, b = field_at(current, name), field_at(baseline, name)
        if a != b:
            # another schema_version is another sdopt's report, not other settings: only a new baseline helps
            todo = ("The baseline was written by another version of sdopt's report: bench the baseline again with this sdopt"
                    if name == "schema_version" else
                    # no setting makes another model's report comparable ("bench with the same settings" sent a developer
                    # looking for a flag after a change to init-model or the checkpoint)
                    "The model's files differ from the baseline's: bench the baseline's model, or refresh the baseline if the "
                    "model changed on purpose" if name.startswith("model.") else
                    "Bench with the same settings as the baseline, or refresh the baseline")
            raise IncomparableReports(
                f"the reports cannot be compared: {name} differs (baseline {json.dumps(b)[:120]}, current {json.dumps(a)[:120]}). {todo}"
            )
    a, b = reference_identity(current, baseline), reference_identity(baseline, current)
    if a != b:
        diff = ", ".join(f"{k} {json.dumps(b.get(k))[:60]} vs {json.dumps(a.get(k))[:60]}" for k in a if a.get(k) != b.get(k))
        raise IncomparableReports(
            f"the reports cannot be compared: the reference differs (baseline {baseline['reference']!r}, current {current['reference']!r}: "
            f"{diff}, baseline vs current). Bench against the same reference as the baseline, or refresh the baseline"
        )


def reference_identity(report: dict, other: dict | None = None) -> dict[str, Any]:
    """What the reference is (REFERENCE_IDENTITY, from its row), whatever the report names it; its files compared
    blind to library versions where this report's and ``other``'s reference rows both record that (VERSION_BLIND)."""
    row, other_row = _reference_row(report), _reference_row(other) if other else None
    keys = [_version_blind(k, row, other_row, dict.get) if other_row is not None else k for k in REFERENCE_IDENTITY]
    return {k: row.get(k) for k in keys}


def _reference_row(report: dict) -> dict:
    return rows_by_name(report).get(report["reference"], {})


def _version_blind(key: str, a: dict, b: dict, get) -> str:
    blind = VERSION_BLIND.get(key)
    return blind if blind and get(a, blind) and get(b, blind) else key


def rows_by_name(report: dict) -> dict[str, dict]:
    return {a["name"]: a for a in report["artifacts"]}


def rows_to_compare(current: dict, baseline: dict | None, rules: list[Rule]) -> tuple[dict[str, dict], list[str], list[str]]:
    """The baseline's row of each artifact, by this run's names (the reference's under its name here); the artifacts
    in the baseline but not in this run; and the notes on what will not be compared, and why, in the order they are
    said. Raises IncomparableReports where the reference's name here is another artifact of the baseline."""
    notes: list[str] = []
    if baseline is None and (unjudged := [f"{r.metric} {r.text}" for r in rules if r.needs_baseline]):
        notes.append(f"not judged without a baseline (--baseline REPORT): {', '.join(unjudged)}; only absolute floors were checked")
    if baseline is not None and field_at(current, "model.fingerprint") != field_at(baseline, "model.fingerprint"):
        # check_comparable let them through: the same model files but for the library versions written in their configs.
        notes.append("the model's files differ from the baseline's only in the library versions their configs record "
                     f"(fingerprint {str(field_at(baseline, 'model.fingerprint'))[:12]} there, {str(field_at(current, 'model.fingerprint'))[:12]} "
                     "here): the same model, compared")
    if baseline is not None and baseline == current:
        # A CI step that gates the report it just wrote (or copied over the baseline with --refresh) passes whatever ran:
        # every change is 0. Not refused (a report is its own baseline in a smoke test), but said where the log shows it.
        notes.append("the baseline is this very report (the same file, or a copy of it): every change is 0 and no regression "
                     "can show; give the committed baseline to --baseline")
    other_cpu = baseline is not None and cpu_kind(current) != cpu_kind(baseline)
    if other_cpu:
        notes.append(
            f"speed not compared: the baseline ran on a CPU with {cpu_kind(baseline) or 'unknown features'}, this run on one with "
            f"{cpu_kind(current) or 'unknown features'}; backends take other kernels on each, so their speed ratios differ by design. "
            "Commit a baseline from this kind of CPU to gate speed here (scripts/ci_bench.sh --refresh)"
        )
    base_artifacts = rows_by_name(baseline) if baseline else {}
    relative = sorted({r.metric for r in rules if r.needs_baseline})  # the metrics a row not in the baseline goes unjudged on
    if baseline is not None and baseline["reference"] != current["reference"]:
        # The same reference under another name (check_comparable has compared what it is): its row is the current one's.
        if current["reference"] in base_artifacts:
            raise IncomparableReports(
                f"the reports cannot be compared: the baseline's reference is {baseline['reference']!r}, and its {current['reference']!r} "
                "is another of its artifacts; bench with the baseline's names, or refresh the baseline")
        base_artifacts[current["reference"]] = base_artifacts.pop(baseline["reference"])
        notes.append(f"the reference is named {current['reference']!r} here and {baseline['reference']!r} in the baseline: "
                     f"the same artifact ({reference_identity(current)['artifact_id']}, run alike), compared as one")
    gone = sorted(base_artifacts.keys() - rows_by_name(current).keys())
    # An artifact added or renamed: its checks against the baseline read "skipped" in a table the summary line counted
    # as checks ("PASS (0 regression(s) in 31 checks)"), so a CI log said nothing of a row never compared
    new = [a["name"] for a in current["artifacts"] if a["name"] not in base_artifacts]
    if baseline is not None and new and relative:
        notes.append(f"not in the baseline, so not compared with it ({', '.join(relative)} skipped; floors and status "
                     f"checked): {', '.join(new)}" + (f" (renamed from {', '.join(gone)}?)" if gone else "")
                     + "; refresh the baseline to gate them")
    # A baseline whose run of an artifact failed (scripts/ci_bench.sh --refresh copies the report whatever failed) has
    # nothing to compare it with: every later run's slowdown or quality loss there was "skipped" under a PASS
    failed_there = [a["name"] for a in current["artifacts"] if a["name"] in base_artifacts and base_artifacts[a["name"]].get("status") != "ok"]
    if failed_there and relative:
        notes.append(f"failed in the baseline, so not compared with it ({', '.join(relative)} skipped; floors and status "
                     f"checked): {', '.join(failed_there)}; refresh the baseline from a run where they ran to gate them")
    # by this run's name: a baseline's reference named otherwise is in base_artifacts under it (the note was lost)
    base_reference = base_artifacts.get(current["reference"]) if baseline is not None else None
    if base_reference is not None and base_reference.get("status") != "ok" and relative:
        # every row's ratio and images are the reference's: none was measured in that run, and each check read MISSING
        notes.append(f"the baseline's reference ({baseline['reference']}) failed in its run, so no ratio to it or image "
                     "compared with it was measured there: its checks against the baseline cannot be judged; refresh the "
                     "baseline from a run where the reference ran")
    if gone:
        notes.append(f"in the baseline but not in this run: {', '.join(gone)}; bench them, or, if they were dropped or "
                     "renamed on purpose, refresh the baseline")
    return base_artifacts, gone, notes


def check_same_judge(name: str, artifact: dict, base: dict) -> None:
    """Adherence scores from two judges (the classical one, a VLM) are two scales: a change between them is no change."""
    judges = [field_at(row, "adherence.judge") for row in (base, artifact)]
    if all(judges) and judges[0] != judges[1]:
        raise IncomparableReports(
            f"the reports cannot be compared on adherence: {name}'s was judged by the {judges[0]} judge in the baseline and by the "
            f"{judges[1]} judge here. Bench with --judge {judges[0]}, or refresh the baseline"
        )


_MEMORY_KINDS = {"rss": "the process's peak resident set (rss)", "cuda_allocated": "the CUDA allocator's peak (cuda_allocated)"}


def check_same_memory_kind(name: str, artifact: dict, base: dict) -> None:
    """A CPU run's peak memory is its RSS, a CUDA run's the allocator's peak: two quantities, so a change between them is
    no change (a CUDA report against a CPU baseline passed at -90%)."""
    kinds = [row.get("peak_memory_kind") for row in (base, artifact)]
    if all(kinds) and kinds[0] != kinds[1]:
        raise IncomparableReports(
            f"the reports cannot be compared on peak_memory: {name}'s is {_MEMORY_KINDS.get(kinds[0], kinds[0])} in the baseline "
            f"and {_MEMORY_KINDS.get(kinds[1], kinds[1])} here. Bench on the baseline's device, or refresh the baseline"
        )


def _worker_start(report: dict) -> str:
    # Written before the bench recorded it (2026-12-04), a report's workers started cold: forked ones came with the record.
    return field_at(report, "settings.worker_start") or "cold"


def check_same_worker_start(current: dict, baseline: dict) -> None:
    """A cold worker's load time includes importing its backend (torch and Diffusers: ~6 s), a forked one's is the
    artifact's own: two quantities, so their ratios to the reference are not a change (a forked run gated against a
    baseline from before forked workers failed load at +1,150%)."""
    starts = [_worker_start(report) for report in (baseline, current)]
    if starts[0] != starts[1]:
        said = {"cold": "started cold (a load that includes importing the backend)", "fork": "were forked (a load that is the artifact's own)"}
        base = said.get(starts[0], starts[0])
        if not field_at(baseline, "settings.worker_start"):
            base = "started cold, as every sdopt's did before its reports recorded how (a load that includes importing the backend)"
        raise IncomparableReports(
            f"the reports cannot be compared on load: the baseline's workers {base}, this run's {said.get(starts[1], starts[1])}. "
            f"Bench with --worker-start {starts[0]}, or refresh the baseline"
        )


def cpu_kind(report: dict) -> str:
    """The CPU features a report's speed depends on (its ISA extensions, as the bench records them)."""
    machine = report.get("machine")
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    isa = cpu.get("isa") if isinstance(cpu, dict) else None
    # A report edited by hand or written by an older sdopt may lack these: it then counts as "unknown features".
    kind = " ".join(sorted(str(x) for x in isa)) if isinstance(isa, list) else ""
    # A run under ONEDNN_MAX_CPU_ISA or ATEN_CPU_CAPABILITY took neither this CPU's kernels nor a genuine AVX2 CPU's
    # (docs/cpu-features.md: torch still picks its int8 path by cpuid): another kind of machine for speed. Said in
    # words a file name can hold: scripts/ci_bench.sh names its baselines by this kind.
    caps = cpu.get("isa_caps") if isinstance(cpu, dict) else None
    if isinstance(caps, dict) and caps:
        # a oneDNN cap in one spelling (reports of older sdopt kept it as typed: "avx2" and "AVX2" are one cap to oneDNN)
        caps = {k: cap_level(str(v)) if k in ONEDNN_CAP_VARIABLES else v for k, v in caps.items()}
        kind = f"{kind} under ".lstrip() + " ".join(f"{k}={v}" for k, v in sorted(caps.items()))
    return kind
