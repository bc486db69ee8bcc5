"""bitsandbytes' AVX-512-BF16 nf4 kernel against its portable path, on the sd15 nf4 UNet, in one run.

On a CPU with AVX-512-BF16, bitsandbytes runs each nf4 Linear layer whose
shape fits its packed layout with a bf16 kernel (sdopt keeps that choice, see
src/sdopt/quant/bnb.py); elsewhere, and on the layers that do not fit, it
dequantizes and multiplies in fp32. This loads one nf4 artifact twice, once
as sdopt loads it and once with every layer on the portable path, and
generates the same request with each, interleaved round by round (so a burst
of load from other processes hits both alike). It reports the UNet step
median of each, their ratio, and the PSNR of each image against the fp32
checkpoint's (same seed). Nothing to measure on a CPU without AVX-512-BF16:
the script says so and exits.

    sdopt init-model sd15 /tmp/sd15
    sdopt quantize /tmp/sd15 --scheme nf4 --backend bnb -o /tmp/sd15-nf4
    .venv/bin/python measure/bnb_cpu_kernel_sd15.py --fp32 /tmp/sd15 --nf4 /tmp/sd15-nf4 --out docs/measurements/bnb_cpu_kernel_sd15.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REQUEST = dict(prompt="a watercolor painting of a lighthouse at dawn", seed=42, steps=4, height=256, width=256, guidance_scale=7.5, scheduler="ddim")


def portable_everywhere(pipe) -> int:
    """Turn bitsandbytes' AVX-512-BF16 path off on every nf4 Linear layer of the pipeline; return how many were on."""
    import bitsandbytes as bnb

    on = 0
    for component in pipe.components.values():
        for module in component.module.modules():  # a torch artifact: every component is a TorchComponent
            if isinstance(module, bnb.nn.Linear4bit):
                on += bool(module.support_avx512bf16_for_cpu)
                module.support_avx512bf16_for_cpu = False
    return on


def psnr(a, b) -> float:
    from sdopt.quality import psnr_db

    return psnr_db(np.asarray(a), np.asarray(b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, help="the sd15 checkpoint (the quality reference)")
    parser.add_argument("--nf4", required=True, help="its bnb nf4 artifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import sdopt  # first: it quiets bitsandbytes' import-time line about hub kernels
    from sdopt import GenerateRequest
    import bitsandbytes.functional as bnbf
    from sdopt.machine import fingerprint

    machine = fingerprint()
    if not bnbf.has_avx512bf16():
        print(f"this CPU ({machine['cpu'].get('model')}, {', '.join(machine['cpu'].get('isa', []))}) lacks AVX-512-BF16: "
              "bitsandbytes has only its portable path here, so there is nothing to compare")
        return 0
    request = GenerateRequest(**REQUEST)
    warm = GenerateRequest(**{**REQUEST, "steps": 1})
    reference = sdopt.load(args.fp32).generate(request).images[0]
    pipes = {"avx512bf16_kernel": sdopt.load(args.nf4), "portable": sdopt.load(args.nf4)}
    layers_on = portable_everywhere(pipes["portable"])
    for pipe in pipes.values():
        pipe.generate(warm)  # first call: the repacking happens here, and lazy inits
    steps: dict[str, list[float]] = {name: [] for name in pipes}
    totals: dict[str, list[float]] = {name: [] for name in pipes}
    images = {}
    for r in range(args.rounds):
        for name, pipe in pipes.items():
            result = pipe.generate(request)
            steps[name] += result.timings.unet_steps
            totals[name].append(result.timings.total)
            images[name] = result.images[0]
            print(f"round {r + 1}/{args.rounds} {name}: UNet step median {statistics.median(result.timings.unet_steps):.3f} s, total {result.timings.total:.2f} s", flush=True)
    out = {
        "what": "sd15 bnb nf4 UNet + text encoder, 256x256, 4 DDIM steps, guidance 7.5 (UNet batch 2), batch 1",
        "linear4bit_layers_on_kernel": layers_on,
        "rounds": args.rounds,
        "unet_step_median_s": {n: statistics.median(v) for n, v in steps.items()},
        "total_median_s": {n: statistics.median(v) for n, v in totals.items()},
        "psnr_vs_fp32_db": {n: psnr(img, reference) for n, img in images.items()},
        "psnr_kernel_vs_portable_db": psnr(images["avx512bf16_kernel"], images["portable"]),
        "machine": {k: machine[k] for k in ("cpu", "memory_bytes", "libraries", "git_commit")},
    }
    out["portable_over_kernel_step_ratio"] = out["unet_step_median_s"]["portable"] / out["unet_step_median_s"]["avx512bf16_kernel"]
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
