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

What two reports must share to be compared, and the notes on what is not compared, are sdopt.bench.comparable's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sdopt.bench.rules import BYTE_METRICS, RATIO_METRICS, Rule, parse_rules
from sdopt.bench.assemble import PSNR_CAP_DB, crowded, too_noisy, with_more_rounds
from sdopt.bench.comparable import (  # noqa: F401 (IncomparableReports, NotABenchReport, read_report, cpu_kind: gate's API)
    IncomparableReports, NotABenchReport, check_comparable, check_same_judge, check_same_memory_kind, check_same_worker_start,
    check_shape, cpu_kind, field_at, read_report, rows_by_name, rows_to_compare,
)
from sdopt.request import is_finite_number

EXIT_OK, EXIT_REGRESSION, EXIT_INCOMPARABLE = 0, 1, 2

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


def _ratio(a: dict, ref: dict, path: str) -> float | None:
    x, y = field_at(a, path), field_at(ref, path)
    return x / y if is_finite_number(x) and is_finite_number(y) and x >= 0 and y > 0 else None  # a negative time is no time: MISSING


def metric_value(metric: str, artifact: dict, report: dict) -> Any:
    ref = rows_by_name(report).get(report["reference"], {})
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
    value = field_at(artifact, "adherence.mean" if metric == "adherence" else metric)  # adherence, quality.*
    low, high = POSSIBLE.get(metric, (-math.inf, math.inf))
    return None if is_finite_number(value) and not low - _ROUNDING <= value <= high + _ROUNDING else value  # MISSING, never a pass


def ratio_noise(artifact: dict, report: dict) -> float:
    """Relative standard error of an artifact's latency ratio to the reference, from the samples."""
    ref = rows_by_name(report).get(report["reference"], {})
    a, r = field_at(artifact, "latency_s.rel_stderr"), field_at(ref, "latency_s.rel_stderr")
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
    # what is compared with what, and the notes on what is not (sdopt.bench.comparable)
    base_artifacts, gone, notes = rows_to_compare(current, baseline, rules)
    result = GateResult(notes=notes)
    for name in gone:
        result.checks.append(Check(name, "present", "yes", "missing", "", "in baseline", "REGRESSION"))
    other_cpu = baseline is not None and cpu_kind(current) != cpu_kind(baseline)  # said once in the notes
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
                check_same_judge(name, artifact, base)
            if rule.metric == "peak_memory" and rule.needs_baseline and base is not None:
                check_same_memory_kind(name, artifact, base)
            if rule.metric == "load" and rule.needs_baseline and base is not None:
                check_same_worker_start(current, baseline)
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
                                        + with_more_rounds(field_at(current, "settings.rounds")))
            if verdict == "noise" and 2 * noise > NOISE_BAND_LIMIT:  # a change past the rule that such a band excuses: unjudged
                verdict = "TOO NOISY"
                # Not more seeds: the request's seeds must be the baseline's (another set is incomparable). And a band the
                # baseline's rows alone make past the limit stays so however this run is benched again: it is to refresh.
                baseline_band = 2 * ratio_noise(base, baseline)
                again = (f"the baseline's rows alone make ±{baseline_band:.0%}: bench the baseline again with more --runs and refresh it"
                         if baseline_band > NOISE_BAND_LIMIT else
                         "bench again with more runs a row (--runs), on a quiet machine, or " + with_more_rounds(field_at(current, "settings.rounds")))
                result.notes.append(f"{name} {rule.metric}: not judged: {change} is past {rule.text} but inside the run-to-run noise "
                                    f"(±{2 * noise:.0%}), a band too wide to tell a regression from noise (past ±{NOISE_BAND_LIMIT:.0%}); "
                                    + again)
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


def _noisy_rows(artifact: dict | None, report: dict | None, which: str) -> list[str]:
    """The rows a latency ratio is made of (the artifact and its report's reference) whose timings the bench called
    not comparable (assemble.too_noisy), named with their report and why (``which``: "tiny-int8 (current, spread 44%)")."""
    if not artifact or not report:
        return []
    rows = [artifact, rows_by_name(report).get(report.get("reference"), {})]
    return list(dict.fromkeys(f"{r.get('name')} ({which}, {why})" for r in rows if (why := too_noisy(r)) is not None))


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
