"""Backend run settings side by side: one artifact's UNet timed under several settings, in one process.

Each variant is the artifact loaded with a ``run_settings`` load option (what a profile's
``[run.openvino]`` / ``[run.onnxruntime]`` table passes). The UNet is called at the shape of
one image with guidance (batch 2) at --size; calls are interleaved round by round, so a slow
spell of a shared machine hits every variant alike. Prints the median per variant, its ratio to
the first, and what the backend reports it ran with (docs/optimize.md, "Run settings").

    .venv/bin/python measure/run_settings.py ARTIFACT --size 256 --rounds 8 \\
        --variant 'latency={"PERFORMANCE_HINT": "LATENCY"}' \\
        --variant 'throughput={"PERFORMANCE_HINT": "THROUGHPUT"}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--variant", action="append", required=True, help="NAME=JSON run settings (repeatable; the first is the baseline)")
    parser.add_argument("--size", type=int, default=256, help="image side; the latent is size/8")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import sdopt
    from sdopt.machine import fingerprint

    pipes = {}
    for spec in args.variant:
        name, _, settings = spec.partition("=")
        pipes[name] = sdopt.load(args.artifact, run_settings=json.loads(settings) or None)
    first = next(iter(pipes.values()))
    model = first.manifest.model
    rng = np.random.default_rng(0)
    side = args.size // int(model.get("vae_scale_factor", 8))
    feed = {
        "sample": rng.standard_normal((2, int(model.get("latent_channels", 4)), side, side), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, int(model.get("text_max_length", 77)), int(model["cross_attention_dim"])),
                                                     dtype=np.float32),
    }
    for pipe in pipes.values():  # warm-up: first calls allocate and pick kernels
        pipe.components["unet"](**feed)
    seconds: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(args.rounds):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            pipe.components["unet"](**feed)
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(next(iter(seconds.values())))
    rows = []
    for name, pipe in pipes.items():
        median = statistics.median(seconds[name])
        rows.append({"variant": name, "unet_call_median_ms": round(median * 1000, 1), "ratio_to_first": round(median / base, 3),
                     "reported": pipe.run_settings().get("unet")})
        print(f"{name:<24} {median * 1000:8.1f} ms  x{median / base:.3f}  {rows[-1]['reported']}")
    cpu = fingerprint()["cpu"]
    print(f"machine: {cpu.get('model')}, {cpu.get('usable_cores')} cores, {' '.join(cpu.get('isa', []))}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"artifact": args.artifact, "size": args.size, "rounds": args.rounds, "cpu": cpu, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
