"""Quantized sd15 vs fp32 on this machine: UNet bytes on disk, peak memory and speed, in one run.

    .venv/bin/python measure/quant_sd15.py --model /tmp/sd15 --work /tmp/sd15-quant --out reports/quant-sd15.json

For every CPU-supported (backend, scheme) row of the capability table (or
those given with --variants backend:scheme,...) it quantizes the model with
`sdopt quantize` (default components: UNet and text encoder), then loads each
artifact and fp32 in a fresh child process, one after another, and generates
a one-step warm-up, then the measured request (--timed limits which
variants generate; all are sized). A child per variant keeps each peak-memory
number clean of the others; all ratios come from this one run, and fp32 runs
first and again last to show how much the machine's speed drifted meanwhile
(ratios use the first). The request is small on purpose: 256x256, 4 steps,
guidance on (UNet batch 2), DDIM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REQUEST = dict(prompt="a watercolor painting of a lighthouse at dawn", seed=42, steps=4, height=256, width=256, guidance_scale=7.5, scheduler="ddim")


def child(artifact: str, image_out: str) -> None:
    """Load one artifact, warm up, generate the request, print one JSON line."""
    from sdopt.runtime.memory import rss_peak_bytes

    start = time.perf_counter()
    import sdopt
    from sdopt import GenerateRequest

    pipe = sdopt.load(artifact)
    load_s = time.perf_counter() - start
    load_peak = rss_peak_bytes()  # the process's peak so far: imports plus load
    request = GenerateRequest(**REQUEST)
    pipe.generate(GenerateRequest(**{**REQUEST, "steps": 1}))  # warm-up: first-call allocations, lazy inits
    result = pipe.generate(request)
    result.images[0].save(image_out)
    t = result.timings
    print(
        json.dumps(
            {
                "load_s": load_s,
                "load_peak_rss": load_peak,
                "generate_peak_rss": result.memory["rss"],
                "unet_step_median_s": statistics.median(t.unet_steps),
                "text_encoder_s": t.text_encoder,
                "vae_decoder_s": t.vae_decoder,
                "total_s": t.total,
            }
        )
    )


def machine() -> dict:
    from sdopt.machine import fingerprint
    from sdopt.runtime.versions import library_versions

    return {
        "cpu": fingerprint()["cpu"]["model"],
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        **library_versions("torch", "diffusers", "transformers", "torchao", "quanto", "bnb"),
    }


def component_bytes(artifact: Path, name: str) -> int:
    data = json.loads((artifact / "sdopt.json").read_text())
    return sum(f["size_bytes"] for f in data["components"][name]["files"] if f["path"].endswith(".safetensors"))


def psnr(a_path: Path, b_path: Path) -> float:
    import numpy as np
    from PIL import Image

    from sdopt.quality import psnr_db

    return psnr_db(np.asarray(Image.open(a_path)), np.asarray(Image.open(b_path)))


def run_child(artifact: Path, image: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(artifact), "--image", str(image)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child for {artifact} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/sd15", help="fp32 sd15 checkpoint (sdopt init-model sd15 DIR)")
    ap.add_argument("--work", default="/tmp/sd15-quant", help="where the quantized artifacts are written (reused when present)")
    ap.add_argument("--variants", default=None, help="backend:scheme,... (default: every CPU-supported row)")
    ap.add_argument("--timed", default=None, help="backend:scheme,... that also load and generate (default: all variants)")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--image", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.image)
        return 0

    from sdopt.quant.schemes import table

    if args.variants:
        variants = [tuple(v.split(":", 1)) for v in args.variants.split(",")]
    else:
        variants = [(r.backend, r.scheme) for r in table() if r.device == "cpu" and r.supported and r.backend != "nncf"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model)
    info = machine()
    print(f"machine: {info}", flush=True)
    fp32_unet = component_bytes(model, "unet") if (model / "sdopt.json").exists() else None

    results: dict[str, dict] = {}
    for backend, scheme in variants:
        out = work / f"{backend}-{scheme}"
        entry: dict = {"backend": backend, "scheme": scheme, "artifact": str(out)}
        if not (out / "sdopt.json").exists():
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "sdopt.cli", "quantize", str(model), "--scheme", scheme, "--backend", backend, "-o", str(out)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(f"{backend} {scheme}: quantize failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            entry["quantize_s"] = time.perf_counter() - start
        entry["unet_bytes"] = component_bytes(out, "unet")
        entry["text_encoder_bytes"] = component_bytes(out, "text_encoder")
        results[f"{backend}:{scheme}"] = entry
        print(f"{backend:8} {scheme:13} UNet {entry['unet_bytes'] / 2**20:8.1f} MiB  quantize {entry.get('quantize_s', float('nan')):.0f}s", flush=True)

    fp32 = {"backend": "-", "scheme": "fp32", "artifact": str(model), "unet_bytes": fp32_unet, "text_encoder_bytes": component_bytes(model, "text_encoder")}
    # fp32 runs first and again last: the two show how much the machine's speed drifted during the run.
    timed = set(args.timed.split(",")) if args.timed else set(results)
    runs = {"fp32": fp32, **{k: v for k, v in results.items() if k in timed}, "fp32 (again, last)": dict(fp32)}
    for key, entry in runs.items():
        image = work / f"{key.replace(':', '-')}.png"
        entry.update(run_child(Path(entry["artifact"]), image))
        entry["image"] = str(image)
        print(f"{key:22} generate peak {entry['generate_peak_rss'] / 2**30:.2f} GiB  UNet step {entry['unet_step_median_s']:.2f}s  total {entry['total_s']:.1f}s", flush=True)

    base = runs["fp32"]
    lines = [
        f"sd15 zoo model, {REQUEST['height']}x{REQUEST['width']}, {REQUEST['steps']} steps DDIM, guidance {REQUEST['guidance_scale']} (UNet batch 2), seed {REQUEST['seed']}",
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; torch {info.get('torch')}, torchao {info.get('torchao')}, optimum-quanto {info.get('quanto')}, bitsandbytes {info.get('bnb')}",
        "",
        "| variant | UNet on disk | vs fp32 | text enc. | load peak RSS | generate peak RSS | vs fp32 | UNet step (median) | vs fp32 | total | vs fp32 | PSNR vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in runs.items():
        e["unet_bytes_ratio"] = e["unet_bytes"] / base["unet_bytes"]
        e["generate_peak_ratio"] = e["generate_peak_rss"] / base["generate_peak_rss"]
        e["unet_step_ratio"] = e["unet_step_median_s"] / base["unet_step_median_s"]
        e["total_ratio"] = e["total_s"] / base["total_s"]
        e["psnr_db"] = psnr(Path(base["image"]), Path(e["image"]))
        lines.append(
            f"| {key} | {e['unet_bytes'] / 2**20:,.0f} MiB | {e['unet_bytes_ratio']:.1%} | {e['text_encoder_bytes'] / 2**20:,.0f} MiB "
            f"| {e['load_peak_rss'] / 2**30:.2f} GiB | {e['generate_peak_rss'] / 2**30:.2f} GiB | {e['generate_peak_ratio']:.2f} "
            f"| {e['unet_step_median_s']:.2f} s | {e['unet_step_ratio']:.2f} | {e['total_s']:.1f} s | {e['total_ratio']:.2f} | "
            + ("identical" if e["psnr_db"] == float("inf") else f"{e['psnr_db']:.1f} dB")
            + " |"
        )
    lines += ["", "| variant | UNet on disk | vs fp32 | text encoder on disk |", "|---|---|---|---|"]
    for key, e in results.items():
        lines.append(f"| {key} | {e['unet_bytes'] / 2**20:,.1f} MiB | {e['unet_bytes'] / fp32['unet_bytes']:.1%} | {e['text_encoder_bytes'] / 2**20:,.1f} MiB |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"request": REQUEST, "machine": info, "runs": runs, "sizes": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
