"""`sdopt gate`: turn bench reports into a pass/fail verdict for CI.

Exit 0 when every rule holds, 1 on a regression, 2 when the reports cannot be
compared (different prompts, seeds, steps, shapes, model or schema) or judged
(a number a rule asks about is missing from an artifact that ran: MISSING,
never a pass).

Speed is judged noise-aware: an artifact's latency is read as its ratio to the
reference artifact measured in the same run, so a slower or busier machine
does not fail the gate by itself; and a change within the run-to-run noise
recorded in the reports (twice the combined standard error of the medians) is
reported as "noise", not as a regression.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdopt.bench.rules import BYTE_METRICS, RATIO_METRICS, Rule, parse_rules
from sdopt.bench.assemble import PSNR_CAP_DB, REPORT_SCHEMA, crowded, too_noisy, with_more_rounds
from sdopt.request import is_finite_number
from sdopt.errors import SdoptError
from sdopt.file_reading import read_json
from sdopt.hardware import ONEDNN_CAP_VARIABLES, cap_level

EXIT_OK, EXIT_REGRESSION, EXIT_INCOMPARABLE = 0, 1, 2

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
# The values a bench can write (PSNR of uint8 images is at least 0 dB, capped at PSNR_CAP_DB; SSIM and a cosine lie in
# [-1, 1]; a judge scores 0 to 1). One outside was edited or corrupted: MISSING, as a negative time, never a pass of a floor.
POSSIBLE = {"quality.psnr_db": (0.0, PSNR_CAP_DB), "quality.ssim": (-1.0, 1.0), "quality.latent_cosine": (-1.0, 1.0), "adherence": (0.0, 1.0)}
_ROUNDING = 1e-9  # a cosine of equal vectors may come out 1 + 2e-16
_AT_THRESHOLD = 1e-9  # a change that lands on a rule's threshold but for floating-point rounding (a fraction, or the rule's unit)
# Above 70 dB an image is the reference but for rounding: a mean squared error of at most 0.0065 level², a few values
# one level apart (on 64x64, 80 values one level off; on 512x512, a single value 71 levels off). That is where every
# exact row of the committed reports lies (fp32 exports 80-89 dB), and its PSNR swings with which few values round the
# other way: an fp32 ONNX row went from 89.03 to 86.02 dB (-3.01 against the default rule's -0.5) with 2 of 12,288
# values one level apart, from ONEDNN_MAX_CPU_ISA alone (qa83). Every lossy row of those reports (bf16, int8, fp16,
# step caching) lies below 60 dB and is judged by its rule. (48.13 dB, a mean error of one level, was the first line
# drawn: a PSNR is a mean, and 60 values 100 levels off on 512x512 still read 49.3 dB; qa87.)
EXACT_PSNR_DB = 70.0
# The widest noise band (twice the combined standard error) that may excuse a latency change past its rule as "noise".
# Rows the bench does not call too noisy (spread up to 20%) still make a band of ±105% from 2 samples a row (±61% from 6,
# ±35% from 18): an 80% slowdown read as noise and passed. The committed reports' 120 rows whose timings the bench did
# not call too noisy, each gated against a copy of its report, make bands of 11.5% (median) to 35.4%; a band past ±50%
# would excuse slowdowns that even this project's CI rule, +50% to cover the tiny model's swings, forbids (qa102).
NOISE_BAND_LIMIT = 0.5
# Used when neither --rules nor a profile (given, or named in the report) says otherwise.
DEFAULT_RULES: dict[str, Any] = {
    "latency.median": "+10%",
    "peak_memory": "+5%",
    "quality.psnr_db": ["-0.5", ">= 30"],
    "status": "ok",
}


class IncomparableReports(SdoptError):
    exit_code = EXIT_INCOMPARABLE


class NotABenchReport(SdoptError):
    """A file given as a report that is no complete `sdopt bench` report (exit 2, as every input error)."""

    exit_code = EXIT_INCOMPARABLE


# Why a verdict is "cannot judge" (exit 2), as --json's "cannot_judge" says it: exit 2 stands for all four (users rely on
# it), and a CI that benches again only where that can help (too noisy) had to parse the notes' prose to tell them apart.
CANNOT_JUDGE = {
    "too noisy": "every check not judged was TOO NOISY: bench again (more rounds, a quieter machine)",
    "missing": "a number a rule asks about is missing from a report, or is one no bench can write",
    "incomparable": "the reports were made differently (settings, model, device, schema, reference): bench as the baseline was, or refresh it",
    "input": "a report, rules file or profile could not be read or is not one: the note says which",
}


@dataclass
class Check:
    artifact: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    change: str
    threshold: str
    # ok, noise, REGRESSION, MISSING, TOO NOISY (a slowdown past the rule in rows the bench itself called too noisy to
    # compare: cannot judge), n/a (the artifact failed: status says so), skipped (no baseline value)
    verdict: str
    # The numbers behind the texts above, for a machine reader of --json ("0.173× ref" is for people): the values in
    # ``unit`` (null where there is no number), the change as a fraction of the baseline's, the noise band (a fraction)
    # where it applied to the verdict.
    baseline_value: float | None = None
    current_value: float | None = None
    unit: str | None = None
    relative_change: float | None = None
    noise_band: float | None = None

    @property
    def failed(self) -> bool:
        return self.verdict == "REGRESSION"

    @property
    def missing(self) -> bool:
        """A check the gate cannot judge (exit 2): a number absent, or timings too noisy to call a change a regression."""
        return self.verdict in ("MISSING", "TOO NOISY")


@dataclass
class GateResult:
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the gate did not compare, and why
    error: str | None = None  # set where the gate raised: "incomparable" or "input" (CANNOT_JUDGE)

    @property
    def exit_code(self) -> int:
        if any(c.failed for c in self.checks):
            return EXIT_REGRESSION
        return EXIT_INCOMPARABLE if any(c.missing for c in self.checks) or not self.checks else EXIT_OK

    @property
    def verdict(self) -> str:
        return {EXIT_OK: "PASS", EXIT_REGRESSION: "FAIL"}.get(self.exit_code, "CANNOT JUDGE")

    @property
    def cannot_judge(self) -> str | None:
        """Which CANNOT_JUDGE made the verdict exit 2 (a missing number before noise: benching again will not bring it)."""
        if self.exit_code != EXIT_INCOMPARABLE:
            return None
        if self.error:
            return self.error
        return "too noisy" if self.checks and all(c.verdict == "TOO NOISY" for c in self.checks if c.missing) else "missing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": {EXIT_OK: "pass", EXIT_REGRESSION: "fail"}.get(self.exit_code, "cannot judge"),
            "exit_code": self.exit_code,
            "cannot_judge": self.cannot_judge,
            "regressions": sum(c.failed for c in self.checks),
            "notes": self.notes,
            "checks": [c.__dict__ for c in self.checks],
        }


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


def _get(data: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def check_comparable(current: dict, baseline: dict) -> None:
    for name in COMPARABLE_FIELDS:
        name = _version_blind(name, current, baseline, _get)
        a, b = _get(current, name), _get(baseline, name)
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
    return _by_name(report).get(report["reference"], {})


def _version_blind(key: str, a: dict, b: dict, get) -> str:
    blind = VERSION_BLIND.get(key)
    return blind if blind and get(a, blind) and get(b, blind) else key


def _by_name(report: dict) -> dict[str, dict]:
    return {a["name"]: a for a in report["artifacts"]}


def _ratio(a: dict, ref: dict, path: str) -> float | None:
    x, y = _get(a, path), _get(ref, path)
    return x / y if is_finite_number(x) and is_finite_number(y) and x >= 0 and y > 0 else None  # a negative time is no time: MISSING


def metric_value(metric: str, artifact: dict, report: dict) -> Any:
    ref = _by_name(report).get(report["reference"], {})
    if metric == "status":
        return artifact.get("status")
    if metric == "latency.median":
        return _ratio(artifact, ref, "latency_s.median")
    if metric == "latency.p90":
        return _ratio(artifact, ref, "latency_s.p90")
    if metric == "load":
        return _ratio(artifact, ref, "load_s")
    if metric in ("peak_memory", "size"):
        value = artifact.get("peak_memory_bytes" if metric == "peak_memory" else "size_bytes")
        return None if is_finite_number(value) and value < 0 else value  # a negative count of bytes: MISSING, never smaller
    value = _get(artifact, "adherence.mean" if metric == "adherence" else metric)  # adherence, quality.*
    low, high = POSSIBLE.get(metric, (-math.inf, math.inf))
    return None if is_finite_number(value) and not low - _ROUNDING <= value <= high + _ROUNDING else value  # MISSING, never a pass


def ratio_noise(artifact: dict, report: dict) -> float:
    """Relative standard error of an artifact's latency ratio to the reference, from the samples."""
    ref = _by_name(report).get(report["reference"], {})
    a, r = _get(artifact, "latency_s.rel_stderr"), _get(ref, "latency_s.rel_stderr")
    return math.hypot(a if is_finite_number(a) else 0.0, r if is_finite_number(r) else 0.0)


# The unit of each metric's numbers in --json (the metrics not named are plain numbers: SSIM, a cosine, a 0-1 score).
UNITS = {**{m: "ratio to reference" for m in RATIO_METRICS}, **{m: "bytes" for m in BYTE_METRICS}, "quality.psnr_db": "dB"}


def _fmt(metric: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if not is_finite_number(value):
        return repr(value)[:24]
    if metric in RATIO_METRICS:
        return f"{value:.3f}× ref"
    if metric in ("peak_memory", "size"):
        return f"{value / 2**20:,.1f} MiB"
    return f"{value:.4g}"


def _relative(value: float, base: float) -> float:
    # the change as a share of the baseline's size: value / base - 1 turned the sign round for a negative baseline (an SSIM
    # or latent cosine below 0), so a drop from -0.5 to -0.9 read +80% and passed a "-2%" rule
    return (value - base) / abs(base) if base else 0.0


def _judge(rule: Rule, value: Any, base: Any, noise: float | None, ran: bool) -> tuple[str, str]:
    """(change text, verdict) of one rule on one value. ``ran``: the artifact's status is ok."""
    if rule.kind == "equals":
        return "", "ok" if value == rule.word else "REGRESSION"
    if not is_finite_number(value):
        # A failed artifact has no numbers, and its status check already fails the gate.
        return "", "MISSING" if ran else "n/a"
    # A value on a floor or ceiling but for rounding passes: an adherence mean of 20 images that is 17/20 exactly summed
    # to 0.8499999999999999 and failed ">= 0.85".
    if rule.kind == "floor":
        return "", "ok" if value >= rule.amount - _AT_THRESHOLD else "REGRESSION"
    if rule.kind == "ceiling":
        return "", "ok" if value <= rule.amount + _AT_THRESHOLD else "REGRESSION"
    if base is None:
        return "", "skipped"
    if not is_finite_number(base):
        return "", "MISSING"  # the baseline ran this artifact but lacks the number
    if base == 0 and value != 0 and (rule.relative or rule.metric in RATIO_METRICS):
        # No change is a percentage of 0: it read "+0.0%" and passed any growth (a Windows report of an older sdopt
        # recorded every peak memory as 0 bytes; a 10x larger run passed its "+25%" against it)
        return "", "MISSING"
    rel = _relative(value, base)
    change = (f"{rel * 100:+.1f}%" if rule.relative or rule.metric in RATIO_METRICS else
              f"{(value - base) / 2**20:+,.1f} MiB" if rule.metric in BYTE_METRICS else f"{value - base:+.3g}")  # as the values are shown
    if rule.kind == "increase":
        worse_by = rel if rule.relative else value - base
    else:
        worse_by = -rel if rule.relative else base - value
    # A change exactly at the threshold is allowed ("at most 5%"): 100 -> 105 MiB computes as 5.0000000000000044% in
    # binary floating point, and was a REGRESSION shown as "+5.0%" against "+5%".
    if worse_by <= rule.amount / (100 if rule.relative else 1) + _AT_THRESHOLD:
        return change, "ok"
    if rule.kind == "decrease" and rule.metric == "quality.psnr_db" and min(value, base) >= EXACT_PSNR_DB:
        return change, "ok"  # both the reference but for rounding (EXACT_PSNR_DB)
    if noise is not None and rule.relative and abs(rel) <= 2 * noise:
        return change, "noise"
    return change, "REGRESSION"


def gate(current: dict, rules_table: dict[str, Any], baseline: dict | None = None) -> GateResult:
    check_shape(current, "the current report")
    if baseline is not None:
        check_shape(baseline, "the baseline report")
        check_comparable(current, baseline)
    rules = parse_rules(rules_table)
    if not any(r.metric == "status" for r in rules):
        rules.append(parse_rules({"status": "ok"})[0])  # a failed artifact always fails the gate
    result = GateResult()
    if baseline is None and (relative := [f"{r.metric} {r.text}" for r in rules if r.needs_baseline]):
        result.notes.append(f"not judged without a baseline (--baseline REPORT): {', '.join(relative)}; only absolute floors were checked")
    if baseline is not None and _get(current, "model.fingerprint") != _get(baseline, "model.fingerprint"):
        # check_comparable let them through: the same model files but for the library versions written in their configs.
        result.notes.append("the model's files differ from the baseline's only in the library versions their configs record "
                            f"(fingerprint {str(_get(baseline, 'model.fingerprint'))[:12]} there, {str(_get(current, 'model.fingerprint'))[:12]} "
                            "here): the same model, compared")
    if baseline is not None and baseline == current:
        # A CI step that gates the report it just wrote (or copied over the baseline with --refresh) passes whatever ran:
        # every change is 0. Not refused (a report is its own baseline in a smoke test), but said where the log shows it.
        result.notes.append("the baseline is this very report (the same file, or a copy of it): every change is 0 and no regression "
                            "can show; give the committed baseline to --baseline")
    other_cpu = baseline is not None and cpu_kind(current) != cpu_kind(baseline)
    if other_cpu:
        result.notes.append(
            f"speed not compared: the baseline ran on a CPU with {cpu_kind(baseline) or 'unknown features'}, this run on one with "
            f"{cpu_kind(current) or 'unknown features'}; backends take other kernels on each, so their speed ratios differ by design. "
            "Commit a baseline from this kind of CPU to gate speed here (scripts/ci_bench.sh --refresh)"
        )
    base_artifacts = _by_name(baseline) if baseline else {}
    if baseline is not None and baseline["reference"] != current["reference"]:
        # The same reference under another name (check_comparable has compared what it is): its row is the current one's.
        if current["reference"] in base_artifacts:
            raise IncomparableReports(
                f"the reports cannot be compared: the baseline's reference is {baseline['reference']!r}, and its {current['reference']!r} "
                "is another of its artifacts; bench with the baseline's names, or refresh the baseline")
        base_artifacts[current["reference"]] = base_artifacts.pop(baseline["reference"])
        result.notes.append(f"the reference is named {current['reference']!r} here and {baseline['reference']!r} in the baseline: "
                            f"the same artifact ({reference_identity(current)['artifact_id']}, run alike), compared as one")
    gone = sorted(base_artifacts.keys() - _by_name(current).keys())
    for name in gone:
        result.checks.append(Check(name, "present", "yes", "missing", "", "in baseline", "REGRESSION"))
    # An artifact added or renamed: its checks against the baseline read "skipped" in a table the summary line counted
    # as checks ("PASS (0 regression(s) in 31 checks)"), so a CI log said nothing of a row never compared
    new = [a["name"] for a in current["artifacts"] if a["name"] not in base_artifacts]
    if baseline is not None and new and (relative := sorted({r.metric for r in rules if r.needs_baseline})):
        result.notes.append(f"not in the baseline, so not compared with it ({', '.join(relative)} skipped; floors and status "
                            f"checked): {', '.join(new)}" + (f" (renamed from {', '.join(gone)}?)" if gone else "")
                            + "; refresh the baseline to gate them")
    # A baseline whose run of an artifact failed (scripts/ci_bench.sh --refresh copies the report whatever failed) has
    # nothing to compare it with: every later run's slowdown or quality loss there was "skipped" under a PASS
    failed_there = [a["name"] for a in current["artifacts"] if a["name"] in base_artifacts and base_artifacts[a["name"]].get("status") != "ok"]
    if failed_there and (relative := sorted({r.metric for r in rules if r.needs_baseline})):
        result.notes.append(f"failed in the baseline, so not compared with it ({', '.join(relative)} skipped; floors and status "
                            f"checked): {', '.join(failed_there)}; refresh the baseline from a run where they ran to gate them")
    base_reference = base_artifacts.get(baseline.get("reference")) if baseline is not None else None
    if base_reference is not None and base_reference.get("status") != "ok" and any(r.needs_baseline for r in rules):
        # every row's ratio and images are the reference's: none was measured in that run, and each check read MISSING
        result.notes.append(f"the baseline's reference ({baseline['reference']}) failed in its run, so no ratio to it or image "
                            "compared with it was measured there: its checks against the baseline cannot be judged; refresh the "
                            "baseline from a run where the reference ran")
    if gone:
        result.notes.append(f"in the baseline but not in this run: {', '.join(gone)}; bench them, or, if they were dropped or "
                            "renamed on purpose, refresh the baseline")
    for artifact in current["artifacts"]:
        name = artifact["name"]
        if artifact.get("status") != "ok" and artifact.get("error"):
            # Why it failed, where the gate's reader is: CI benches with its report.md sent to /dev/null
            # (scripts/ci_bench.sh), so a failed row's reason was in no log, only in the report folder.
            result.notes.append(f"{name} failed: {artifact['error']}")
        is_reference = name == current["reference"]
        base = base_artifacts.get(name)
        for rule in rules:
            if is_reference and rule.metric != "status" and (rule.metric in RATIO_METRICS or rule.metric.startswith("quality.")):
                continue  # the reference is its own yardstick: ratio 1, identical images
            if rule.needs_baseline and baseline is None:
                continue  # without a baseline the gate checks absolute floors only
            if other_cpu and rule.metric in RATIO_METRICS:
                continue  # said once in the notes
            value = metric_value(rule.metric, artifact, current)
            base_value = metric_value(rule.metric, base, baseline) if base is not None else None
            if rule.metric == "adherence" and rule.needs_baseline and base is not None:
                _check_same_judge(name, artifact, base)
            if rule.metric == "peak_memory" and rule.needs_baseline and base is not None:
                _check_same_memory_kind(name, artifact, base)
            if rule.metric == "load" and rule.needs_baseline and base is not None:
                _check_same_worker_start(current, baseline)
            if base is not None and base.get("status") != "ok":
                base_value = None  # nothing to compare with: the baseline's run of it failed
            elif base is not None and base_value is None:
                base_value = "absent"  # the baseline ran it and lacks the number: MISSING, never a silent pass
            noise = None
            if rule.metric in _LATENCY_METRICS and is_finite_number(base_value):
                noise = math.hypot(ratio_noise(artifact, current), ratio_noise(base, baseline))
            change, verdict = _judge(rule, value, base_value, noise, ran=artifact.get("status") == "ok")
            if verdict == "MISSING" and base_value == 0:
                result.notes.append(f"{name} {rule.metric}: the baseline's is 0, of which no change is a percentage (an older sdopt "
                                    "on Windows wrote every peak memory as 0 bytes); refresh the baseline")
            if rule.metric == "peak_memory" and verdict == "MISSING":
                unmeasured = [which for which, row in (("this run", artifact), ("the baseline", base))
                              if row is not None and row.get("status") == "ok" and row.get("peak_memory_bytes") is None]
                if unmeasured:  # a bench on Windows reads no peak (sdopt.runtime.memory): not a number gone astray
                    result.notes.append(f"{name} peak_memory: not measured in {' or '.join(unmeasured)} (sdopt reads no peak "
                                        "memory on Windows); leave peak_memory out of the rules to gate such runs")
            # "noise" too: a band made of a too-noisy row's own spread is wide enough to pass any slowdown (the tiny model
            # benched on a busy machine: noise ±136%, a 2.3x slowdown called noise and passed)
            if verdict in ("REGRESSION", "noise") and rule.metric in _LATENCY_METRICS:
                noisy = _noisy_rows(artifact, current, "current") + _noisy_rows(base, baseline, "baseline")
                if noisy:  # the bench said these timings cannot be compared: neither a pass nor a regression
                    verdict = "TOO NOISY"
                    result.notes.append(f"{name} {rule.metric}: not judged: the timings of {'; '.join(noisy)} cannot be compared "
                                        "(the report's own warning); bench again on a quiet machine, or "
                                        + with_more_rounds(_get(current, "settings.rounds")))
            if verdict == "noise" and 2 * noise > NOISE_BAND_LIMIT:  # a change past the rule that such a band excuses: unjudged
                verdict = "TOO NOISY"
                result.notes.append(f"{name} {rule.metric}: not judged: {change} is past {rule.text} but inside the run-to-run noise "
                                    f"(±{2 * noise:.0%}), a band too wide to tell a regression from noise (past ±{NOISE_BAND_LIMIT:.0%}); "
                                    "bench again with more samples a row (--runs, seeds), on a quiet machine, or "
                                    + with_more_rounds(_get(current, "settings.rounds")))
            # the band only where _judge applies it (a relative change rule on a row that ran): beside "<= 2" or an n/a it misled
            applies = noise and rule.relative and rule.kind not in ("equals", "floor", "ceiling") and verdict != "n/a"
            threshold = rule.text + (f" (noise ±{2 * noise * 100:.1f}%)" if applies else "")
            numbers = [v if is_finite_number(v) else None for v in (base_value, value)]
            result.checks.append(Check(name, rule.metric, _fmt(rule.metric, base_value) if base is not None else "–", _fmt(rule.metric, value), change,
                                       threshold, verdict, *numbers, UNITS.get(rule.metric) if any(x is not None for x in numbers) else None,
                                       _relative(value, base_value) if None not in numbers and base_value else None, 2 * noise if applies else None))
    # A speed check that passed says little where other processes held the CPUs while a row ran: a crowded reference makes
    # every artifact look faster (ONNX "15x" the reference under load, 2x quiet). Not a verdict (the gate judges
    # regressions, and TOO NOISY already takes those); said, so a CI log shows it without the bench report.
    # Only the rows those checks read (the artifact and each report's reference): a crowded row whose own check was TOO
    # NOISY was named as one a check had passed on.
    passed = {c.artifact for c in result.checks if c.metric in _LATENCY_METRICS and c.verdict in ("ok", "noise")}
    if passed:
        busy = [f"{r['name']} ({which}, others took {share:.0%})" for which, report in (("current", current), ("baseline", baseline))
                if report is not None for r in report["artifacts"]
                if (r["name"] in passed or r["name"] == report["reference"]) and (share := crowded(r)) is not None]
        if busy:
            result.notes.append(f"speed checks passed on timings taken while other processes held the CPUs: {', '.join(busy)}; "
                                "they may pass on a crowded reference alone: bench again on a quiet machine to trust them")
    return result


_LATENCY_METRICS = ("latency.median", "latency.p90")


def _check_same_judge(name: str, artifact: dict, base: dict) -> None:
    """Adherence scores from two judges (the classical one, a VLM) are two scales: a change between them is no change."""
    judges = [_get(row, "adherence.judge") for row in (base, artifact)]
    if all(judges) and judges[0] != judges[1]:
        raise IncomparableReports(
            f"the reports cannot be compared on adherence: {name}'s was judged by the {judges[0]} judge in the baseline and by the "
            f"{judges[1]} judge here. Bench with --judge {judges[0]}, or refresh the baseline"
        )


_MEMORY_KINDS = {"rss": "the process's peak resident set (rss)", "cuda_allocated": "the CUDA allocator's peak (cuda_allocated)"}


def _check_same_memory_kind(name: str, artifact: dict, base: dict) -> None:
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
    return _get(report, "settings.worker_start") or "cold"


def _check_same_worker_start(current: dict, baseline: dict) -> None:
    """A cold worker's load time includes importing its backend (torch and Diffusers: ~6 s), a forked one's is the
    artifact's own: two quantities, so their ratios to the reference are not a change (a forked run gated against a
    baseline from before forked workers failed load at +1,150%)."""
    starts = [_worker_start(report) for report in (baseline, current)]
    if starts[0] != starts[1]:
        said = {"cold": "started cold (a load that includes importing the backend)", "fork": "were forked (a load that is the artifact's own)"}
        base = said.get(starts[0], starts[0])
        if not _get(baseline, "settings.worker_start"):
            base = "started cold, as every sdopt's did before its reports recorded how (a load that includes importing the backend)"
        raise IncomparableReports(
            f"the reports cannot be compared on load: the baseline's workers {base}, this run's {said.get(starts[1], starts[1])}. "
            f"Bench with --worker-start {starts[0]}, or refresh the baseline"
        )


def _noisy_rows(artifact: dict | None, report: dict | None, which: str) -> list[str]:
    """The rows a latency ratio is made of (the artifact and its report's reference) whose timings the bench called
    not comparable (assemble.too_noisy), named with their report and why (``which``: "tiny-int8 (current, spread 44%)")."""
    if not artifact or not report:
        return []
    rows = [artifact, _by_name(report).get(report.get("reference"), {})]
    return list(dict.fromkeys(f"{r.get('name')} ({which}, {why})" for r in rows if (why := too_noisy(r)) is not None))


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


def _unpassed(checks: list[Check], shown: int = 5) -> str:
    """The checks that did not pass, named on the summary line: a CI log's reader sees its last lines, and a failed row of
    a 27-row table (the CI gate's five artifacts) sat above the last 20, under "1 regression(s) in 27 checks"."""
    unpassed = [f"{c.artifact} {c.metric} {c.change or c.current} (threshold {c.threshold}: {c.verdict})"
                for c in checks if c.failed or c.missing]
    if not unpassed:
        return ""
    more = f"; {len(unpassed) - shown} more in the table above" if len(unpassed) > shown else ""
    return ": " + "; ".join(unpassed[:shown]) + more


def table(result: GateResult, markdown: bool = False) -> str:
    header = ("artifact", "metric", "baseline", "current", "change", "threshold", "verdict")
    rows = [(c.artifact, c.metric, str(c.baseline), str(c.current), c.change, c.threshold, c.verdict) for c in result.checks]
    verdict = result.verdict
    # Two reasons not to judge, said apart: a TOO NOISY row's numbers are all there ("1 number(s) missing" sent readers
    # looking for an absent value)
    missing = sum(c.verdict == "MISSING" for c in result.checks)
    noisy = sum(c.verdict == "TOO NOISY" for c in result.checks)
    counts = (f"{sum(c.failed for c in result.checks)} regression(s)"
              + (f", {missing} number(s) missing" if missing else "") + (f", {noisy} too noisy to judge" if noisy else "")
              + f" in {len(result.checks)} checks")
    if markdown:
        # The counts under the heading too: a PR comment's reader should not have to count a 27-row table's verdicts
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(f"**{v}**" if v == "REGRESSION" else v for v in row) + " |" for row in rows]
        notes = "".join("> " + n.replace("\n", "\n> ") + "\n\n" for n in result.notes)  # a multi-line error stays in its quote
        return f"## sdopt gate: {verdict}\n\n{counts}.\n\n" + notes + "\n".join(lines) + "\n"
    summary = f"gate: {verdict} ({counts})" + _unpassed(result.checks)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    # A failed artifact's error may run over lines: each under its "note: ", so a log's reader (or grep) sees one note
    return "\n".join([*("note: " + n.replace("\n", "\n      ") for n in result.notes), fmt.format(*header), *(fmt.format(*row) for row in rows), summary])
