"""Peak memory and time of one generate call by image size, per backend: ONNX Runtime holds every attention's whole score
matrix on a CPU (sdopt.runtime.attention_memory); the attention_by_head rewrite (sdopt.rewrite.attention) holds one
head's at a time, and attention_fused none (ONNX Runtime's MultiHeadAttention, flash attention on a CPU).

A model (the tiny zoo model by default: 8 heads at the full latent size, as SD 1.5) is exported to ONNX as it is and
with ``--rewrite attention_by_head`` and ``--rewrite attention_fused``, and to OpenVINO (dynamic shapes); each artifact then runs in a process of its own
(peak RSS is per process) at each side, 1 step, guidance on: the call's peak RSS (GenerateResult.memory) and the median
of ``--runs`` calls' times. Prints a table; ``--json`` keeps the figures.

    .venv/bin/python measure/attention_memory.py [--model DIR] [--work DIR] [--sides 256,384,512] [--runs 3] [--only NAME,...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ONE_ARTIFACT = """
import json, sys, time, sdopt
from sdopt import GenerateRequest
pipe = sdopt.load(sys.argv[1])
pipe.generate(GenerateRequest(prompt="a", steps=1, height=64, width=64))
out = {}
for side in map(int, sys.argv[2].split(",")):
    times, peak = [], 0
    for _ in range(int(sys.argv[3])):
        result = pipe.generate(GenerateRequest(prompt="a red circle", steps=1, height=side, width=side))
        times.append(result.timings.total)
        peak = max(peak, result.memory["rss"])
    out[side] = {"peak_gib": peak / 2**30, "seconds": times}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Diffusers model folder (default: the tiny zoo model, written into --work)")
    parser.add_argument("--work", default="out/attention-memory")
    parser.add_argument("--sides", default="256,384,512")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="measure only these rows (comma-separated names as printed: torch, onnxruntime, ...)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from sdopt.cli import main as sdopt_main
    from sdopt.machine import fingerprint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else work / "tiny"
    if not model.exists():
        sdopt_main(["init-model", "tiny", str(model)])
    artifacts = {"torch": model, "onnxruntime": work / "onnx", "onnxruntime, attention_by_head": work / "onnx-by-head",
                 "onnxruntime, attention_fused": work / "onnx-fused", "openvino": work / "openvino"}
    if args.only:
        wanted = args.only.split(",")
        if unknown := sorted(set(wanted) - set(artifacts)):
            parser.error(f"--only {', '.join(unknown)}: not a row; rows: {', '.join(artifacts)}")
        artifacts = {name: path for name, path in artifacts.items() if name in wanted}
    exports = {work / "onnx": ["--to", "onnx"], work / "onnx-by-head": ["--to", "onnx", "--rewrite", "attention_by_head"],
               work / "onnx-fused": ["--to", "onnx", "--rewrite", "attention_fused"], work / "openvino": ["--to", "openvino"]}
    for out, flags in exports.items():
        if out in artifacts.values() and not (out / "sdopt.json").is_file():
            sdopt_main(["export", str(model), *flags, "-o", str(out), "--force", "-q"])
    figures = {}
    for name, path in artifacts.items():
        done = subprocess.run([sys.executable, "-c", ONE_ARTIFACT, str(path), args.sides, str(args.runs)], capture_output=True, text=True, check=True)
        figures[name] = json.loads(done.stdout.strip().splitlines()[-1])
    machine = fingerprint()
    cpu = machine["cpu"]
    print(f"machine: {cpu.get('model')} ({cpu.get('usable_cores', cpu.get('logical_cores'))} cores; {' '.join(cpu.get('isa') or [])})")
    sides = args.sides.split(",")
    print("peak RSS GiB / median seconds, 1 step guided:")
    print(f"{'':32}" + "".join(f"{side + '²':>16}" for side in sides))
    for name, by_side in figures.items():
        print(f"{name:32}" + "".join(f"{by_side[s]['peak_gib']:>8.2f} {statistics.median(by_side[s]['seconds']):>6.2f}s" for s in sides))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "figures": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
