"""What the bench's busy-machine check reads, round by round, from one or more bench report folders.

    python measure/bench_contention.py LABEL=REPORT_DIR [LABEL=REPORT_DIR ...] -o OUT.json

For every artifact and round of each bench (its raw/NAME/round-N/result.json, or raw/NAME/result.json without
--rounds): the median latency, the samples' spread (median absolute deviation over the median) and the share of
the worker's CPUs other processes took while the samples were timed (sdopt.bench.contention), beside the report's
own warnings and the machine it names. Made to show the check on the same bench (scripts/ci_bench.sh) run on a quiet
machine and on one other jobs kept busy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _round(result: dict) -> dict:
    samples = result.get("latency_samples_s") or []
    median = statistics.median(samples) if samples else None
    mad = statistics.median(abs(x - median) for x in samples) / median if median else None
    return {"median_s": median, "rel_mad": mad, "others_cpu_share": result.get("others_cpu_share"), "n": len(samples)}


def summarise(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    rows = {}
    for artifact in sorted((folder / "raw").iterdir()):
        results = sorted(artifact.glob("round-*/result.json")) or [artifact / "result.json"]
        rows[artifact.name] = [_round(json.loads(r.read_text())) for r in results if r.is_file()]
    cpu = report["machine"]["cpu"]
    return {
        "machine": {"model": cpu.get("model"), "usable_cores": cpu.get("usable_cores"), "isa": cpu.get("isa")},
        "created": report.get("created"),
        "rows": {a["name"]: {"median_s": a["latency_s"]["median"], "rel_mad": a["latency_s"]["rel_mad"],
                             "others_cpu_share": a["latency_s"].get("others_cpu_share"),
                             "speedup_vs_reference": 1 / a["latency_ratio_to_reference"] if a.get("latency_ratio_to_reference") else None}
                 for a in report["artifacts"] if a.get("status") == "ok"},
        "rounds": rows,
        "warnings": report.get("warnings", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benches", nargs="+", metavar="LABEL=REPORT_DIR")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    out = {}
    for item in args.benches:
        label, _, folder = item.partition("=")
        out[label] = summarise(Path(folder))
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    for label, bench in out.items():
        shares = [r["others_cpu_share"] for rounds in bench["rounds"].values() for r in rounds if r["others_cpu_share"] is not None]
        print(f"{label}: others' share per round {min(shares):.0%}-{max(shares):.0%}; warnings: {len(bench['warnings'])}")


if __name__ == "__main__":
    main()
