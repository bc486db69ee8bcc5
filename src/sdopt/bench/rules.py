"""The gate's threshold grammar.

    latency.median: "+10%"      may grow by at most 10% against the baseline
    quality.psnr_db: "-0.5"     may drop by at most 0.5 (absolute units) against the baseline
    quality.ssim: "-2%"         may drop by at most 2% against the baseline
    quality.psnr_db: ">= 30"    absolute floor, needs no baseline ("<= X": ceiling)
    peak_memory: "<= 512 MiB"   a number of bytes says its unit (B, KiB, MiB, GiB, kB, MB, GB)
    status: "ok"                must equal this
    quality.psnr_db: ["-0.5", ">= 30"]   several rules for one metric

A signed rule's sign says which way is worse: "+" rules are for metrics where
larger is worse (latency, memory, size), "-" rules where smaller is worse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sdopt.errors import SdoptError

# Metric name -> how to read it from a report's artifact entry. Latency is read as the ratio
# to the reference artifact measured in the same run (see gate.py), never as seconds.
METRICS: dict[str, str] = {
    "latency.median": "latency ratio to reference (median)",
    "latency.p90": "latency ratio to reference (p90)",
    "peak_memory": "peak memory during generate, bytes",
    "size": "size on disk, bytes",
    "load": "cold load time ratio to reference",
    "quality.psnr_db": "PSNR vs reference, dB",
    "quality.ssim": "SSIM vs reference",
    "quality.latent_cosine": "cosine of final latents vs reference",
    "adherence": "prompt adherence by the grounding judge, mean over the images (0-1; the reference too)",
    "status": "ok or failed",
}

# Which way each metric gets worse: a signed rule must say that way ("latency.median: -10%" would fail a faster run
# and pass any slowdown).
LARGER_IS_WORSE = {"latency.median", "latency.p90", "peak_memory", "size", "load"}
STATUS_WORDS = ("ok",)
# Metrics read in bytes, and the units a rule on them may give its number in. A bare number was read as bytes: "<= 500"
# (meant as MiB) failed every run, and "+50" let peak memory grow by 50 bytes.
BYTE_METRICS = {"peak_memory", "size"}
BYTE_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9}
OPTIONAL_UNITS = {"quality.psnr_db": {"dB": 1}}  # may be said, and is read anyway
# Metrics read as a ratio to the reference: a change of one is a percentage. "+50" allowed the ratio to grow by 50 (from
# 0.5x the reference to 50.5x): no run could fail it.
RATIO_METRICS = {"latency.median", "latency.p90", "load"}

_RULE = re.compile(r"^\s*(?:(?P<cmp>>=|<=)\s*(?P<bound>-?\d+(?:\.\d+)?)|(?P<sign>[+-])\s*(?P<amount>\d+(?:\.\d+)?)(?P<pct>%)?|(?P<word>[a-z]+))"
                   r"(?:\s*(?P<unit>[A-Za-z]+))?\s*$")


@dataclass(frozen=True)
class Rule:
    metric: str
    text: str
    kind: str  # "floor", "ceiling", "increase", "decrease", "equals"
    amount: float | None = None
    relative: bool = False
    word: str | None = None

    @property
    def needs_baseline(self) -> bool:
        return self.kind in ("increase", "decrease")


def parse_rule(metric: str, text: str) -> Rule:
    if metric not in METRICS:
        raise SdoptError(f"unknown gate metric '{metric}'; known metrics: {', '.join(METRICS)}")
    m = _RULE.match(str(text))
    if not m:
        raise SdoptError(f"gate rule {metric}: {text!r} is not understood; write like '+10%', '-0.5', '>= 30' or 'ok'")
    if metric == "status" and not m["word"]:
        raise SdoptError(f"gate rule status: {text!r}: status takes 'ok'")
    # The side a rule must take (a ceiling on quality, a floor on latency, a sign the good way: no regression fails it).
    grows_worse = metric in LARGER_IS_WORSE
    bad_way = f"would pass any change the bad way: {metric} gets worse as it {'grows' if grows_worse else 'drops'}"
    if m["cmp"]:
        bound = "<=" if grows_worse else ">="
        if m["cmp"] != bound:
            raise SdoptError(f"gate rule {metric}: {text!r} {bad_way}, so its bound is {bound} {m['bound']}")
        return Rule(metric, text, "floor" if m["cmp"] == ">=" else "ceiling", float(m["bound"]) * _unit_scale(metric, text, m))
    if m["sign"]:
        worse = "+" if grows_worse else "-"
        if m["sign"] != worse:
            raise SdoptError(f"gate rule {metric}: {text!r} {bad_way}, so its rule is {worse}{m['amount']}{m['pct'] or ''} (how much worse is allowed)")
        return Rule(metric, text, "increase" if m["sign"] == "+" else "decrease", float(m["amount"]) * _unit_scale(metric, text, m), relative=bool(m["pct"]))
    _unit_scale(metric, text, m)  # "ok B"
    if metric != "status":
        raise SdoptError(f"gate rule {metric}: {text!r}: a word rule ('ok') applies to status only")
    if m["word"] not in STATUS_WORDS:
        raise SdoptError(f"gate rule status: {text!r}: status takes 'ok' (every artifact ran)")
    return Rule(metric, text, "equals", word=m["word"])


def _unit_scale(metric: str, text: str, m: re.Match) -> float:
    """What a rule's number is multiplied by to be in the unit its metric is read in (bytes for BYTE_METRICS)."""
    unit = m["unit"]
    if m["word"] or m["pct"]:
        if unit:  # "ok B", "+5% MiB": a word or a percentage has no unit
            raise SdoptError(f"gate rule {metric}: {text!r} is not understood; write like '+10%', '-0.5', '>= 30' or 'ok'")
        return 1.0
    number = m["bound"] or m["amount"]
    if metric in BYTE_METRICS:
        if unit not in BYTE_UNITS:
            said = f"{unit!r} is not a unit of bytes" if unit else "its number has no unit"
            # "2 gb" meant GB: advice of "2 MiB" would have the rule a thousand times tighter than the one written
            meant = next((known for known in BYTE_UNITS if unit and known.lower() == unit.lower()), "MiB")
            written = f"{m['cmp']} {number}" if m["cmp"] else f"{m['sign']}{number}"  # as README's '<= 512 MiB', '+64 MiB'
            raise SdoptError(f"gate rule {metric}: {text!r}: {said}; {metric} is read in bytes: write "
                             f"'{written} {meant}' (units: {', '.join(BYTE_UNITS)}), or a percentage such as '+5%'")
        return float(BYTE_UNITS[unit])
    if unit and unit not in OPTIONAL_UNITS.get(metric, {}):
        raise SdoptError(f"gate rule {metric}: {text!r}: {metric} is {METRICS[metric]}; write it without {unit!r}")
    if metric in RATIO_METRICS and m["sign"]:
        grown = 0.5 + float(number)
        # Both readings: before units were checked, "+0.2" was a growth of the ratio by 0.2 (README: "absolute units"),
        # which '+0.2%' alone, as advised, made a rule a hundred times tighter
        raise SdoptError(f"gate rule {metric}: {text!r} would let the ratio to the reference grow by {number}, not by {number}% "
                         f"(0.5x the reference to {grown:g}x: {grown / 0.5 - 1:+.0%}); a change of {metric} is judged as a percentage "
                         f"of the baseline's: write '+{number}%' if that was meant, or the growth meant as one (by {number} from "
                         f"a baseline of 0.5x: '{grown / 0.5 - 1:+.0%}')")
    return 1.0


def parse_rules(table: dict[str, Any]) -> list[Rule]:
    if not isinstance(table, dict):
        raise SdoptError(f"gate rules must be a table of metric = rule, not {type(table).__name__}")
    rules = []
    for metric, value in table.items():
        if isinstance(value, list) and not value:
            raise SdoptError(f"gate rule {metric}: an empty list checks nothing; give a rule such as '+10%', or remove the metric")
        for text in value if isinstance(value, list) else [value]:
            rules.append(parse_rule(metric, text))
    return rules


def load_rules_file(path) -> dict[str, Any]:
    """A TOML file with a [gate] table (a profile works) or the rules at top level."""
    from sdopt.file_reading import read_toml

    data = read_toml(path, what="rules file")
    table = data.get("gate", data)
    if not isinstance(table, dict):  # gate = "+10%": a traceback (no .items()) where a line is due
        raise SdoptError(f"rules file {path}: gate = {json.dumps(table)[:40]} is not a table of rules; write a [gate] table, "
                         "one metric = rule a line under it, such as \"latency.median\" = \"+10%\"")
    # A misspelt [gate] table read as one unknown metric ("unknown gate metric 'gaet'"), and an empty one checked
    # status alone, so a rules file that says nothing passed the gate.
    tables = [key for key, value in table.items() if isinstance(value, dict)]
    if tables:
        raise SdoptError(f"rules file {path}: [{tables[0]}] is a table, not a rule; write the rules in a [gate] table "
                         "(or at the top level), one metric = rule a line, such as \"latency.median\" = \"+10%\"")
    if not table:
        raise SdoptError(f"rules file {path} has no rules: give its [gate] table lines of metric = rule, such as "
                         "\"latency.median\" = \"+10%\" (or leave --rules out for the profile's or the default rules)")
    try:  # read whole here, as a profile's [gate] is: a bad rule said "gate rule ...", not in which file
        parse_rules(table)
    except SdoptError as exc:
        raise SdoptError(f"rules file {path}: {exc}") from None
    return table
