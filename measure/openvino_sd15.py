"""OpenVINO on the sd15 zoo UNet, against PyTorch eager, in one process (docs/openvino.md).

What it measures, at the shape of one 256x256 image with guidance (UNet batch 2, 32x32 latent):

- the UNet's median call time: PyTorch eager fp32, PyTorch eager bf16, OpenVINO "bf16"
  static, OpenVINO int8-static (NNCF), each with the precision OpenVINO reports it runs,
  as ratios and as achieved GFLOP/s (FLOPs counted once with torch's FlopCounterMode);
- the first load of the OpenVINO artifact into an empty compiled-model cache, and the
  second into the warm cache;
- with --quality, the PSNR of 256x256 images against PyTorch fp32 (same seed).

Calls are interleaved round by round (one call of each variant per round), so a burst of
load from other processes on a shared machine hits every variant alike; the medians are
compared only within this run.

    .venv/bin/python measure/openvino_sd15.py [--model /tmp/sd15] [--work DIR] [--rounds 5] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HEIGHT = WIDTH = 256  # 32x32 latent
IMAGES = 1  # with guidance: UNet batch 2


def ensure_model(path: Path) -> None:
    """The sd15 zoo checkpoint: wait for another process that is writing it, else write it."""
    from sdopt.errors import SdoptError
    from sdopt.manifest import read_manifest

    deadline = time.time() + 1800  # a folder left by a killed writer must not block forever
    while list(path.parent.glob(f".{path.name}.tmp-*")) and time.time() < deadline:
        print(f"waiting for another process writing {path} ...", flush=True)
        time.sleep(20)
    try:
        read_manifest(path)
        return
    except SdoptError:
        pass
    subprocess.run([sys.executable, "-m", "sdopt.cli", "init-model", "sd15", str(path)], check=True)


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s", flush=True)
    return result, seconds


def make_artifacts(model: Path, work: Path, reuse: bool) -> tuple[Path, Path, dict]:
    from sdopt.export.run import export
    from sdopt.quant.nncf import quantize_openvino

    ov_bf16, ov_int8 = work / "sd15-ov-bf16-static", work / "sd15-ov-int8-static"
    seconds = {}
    if not (reuse and (ov_bf16 / "sdopt.json").is_file()):
        _, seconds["export_bf16_static"] = timed(
            "export bf16 static", export, model, "openvino", ov_bf16, precision="bf16", height=HEIGHT, width=WIDTH, batch=IMAGES, force=True
        )
    if not (reuse and (ov_int8 / "sdopt.json").is_file()):
        _, seconds["quantize_int8_static"] = timed("quantize int8-static", quantize_openvino, ov_bf16, "int8-static", ov_int8, force=True)
    return ov_bf16, ov_int8, seconds


def unet_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((2 * IMAGES, 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32),
        "timestep": np.array(981.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2 * IMAGES, 77, 768)).astype(np.float32),
    }


def torch_unet(model: Path, dtype):
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=dtype, use_safetensors=True).eval()

    def call(sample, timestep, encoder_hidden_states):
        with torch.inference_mode():
            out = unet(torch.from_numpy(sample).to(dtype), torch.from_numpy(timestep), encoder_hidden_states=torch.from_numpy(encoder_hidden_states).to(dtype)).sample
            return out.float().numpy()

    return call


def interleaved(variants: dict, inputs: dict, rounds: int, slow_factor: float = 8.0) -> dict[str, list[float]]:
    """Per-variant call times, one call of each per round. A variant whose warm-up call took over
    ``slow_factor`` times the fastest one's (PyTorch bf16 on a CPU without bf16 instructions) is
    timed in the first round only: its ratio is an order of magnitude, not a close call."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    warmup = {}
    for name, fn in variants.items():  # warm-up: first-call allocations, lazy kernels
        start = time.perf_counter()
        fn(**inputs)
        warmup[name] = time.perf_counter() - start
        print(f"warm-up {name}: {warmup[name]:.2f}s", flush=True)
    slow = {name for name, t in warmup.items() if t > slow_factor * min(warmup.values())}
    for r in range(rounds):
        for name, fn in variants.items():
            if name in slow and r > 0:
                continue
            start = time.perf_counter()
            fn(**inputs)
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    return times


def load_twice(artifact: Path, cache: Path) -> tuple[object, dict]:
    """First load into an empty cache, then a second into the warm one (the first is closed)."""
    import sdopt

    shutil.rmtree(cache, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "runs fp32 where bf16 was asked" is recorded below instead
        first, cold = timed(f"load {artifact.name}, empty cache", sdopt.load, artifact, cache_dir=cache, verify=False)
        first.close()
        second, warm = timed(f"load {artifact.name}, warm cache", sdopt.load, artifact, cache_dir=cache, verify=False)
    return second, {"cold_s": cold, "warm_s": warm, "speedup": cold / warm}


def quality(model: Path, pipes: dict, steps: int) -> dict[str, float]:
    import sdopt
    from sdopt import GenerateRequest

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from imaging import psnr

    request = GenerateRequest(prompt="a watercolor painting of a lighthouse at dawn", seed=42, steps=steps, height=HEIGHT, width=WIDTH)
    reference = sdopt.load(model).generate(request).images[0]
    return {name: psnr(reference, pipe.generate(request).images[0]) for name, pipe in pipes.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/sd15", type=Path)
    parser.add_argument("--work", default="/tmp/sdopt-bench-openvino", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep artifacts from an earlier run (export takes minutes)")
    parser.add_argument("--quality", type=int, default=8, metavar="STEPS", help="PSNR vs PyTorch fp32 with this many steps (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    import openvino as ov
    import torch

    from sdopt.bench.flops import unet_flops_per_call
    from sdopt.machine import fingerprint
    from sdopt.runtime.versions import library_versions

    args.work.mkdir(parents=True, exist_ok=True)
    ensure_model(args.model)
    results: dict = {
        "machine": {**fingerprint()["cpu"], "openvino_capabilities": list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))},
        "versions": library_versions("torch", "openvino", "nncf", "diffusers"),
        "torch_threads": torch.get_num_threads(),
        "shape": {"unet_batch": 2 * IMAGES, "latent": [HEIGHT // 8, WIDTH // 8], "image": [HEIGHT, WIDTH]},
    }
    ov_bf16, ov_int8, results["setup_seconds"] = make_artifacts(args.model, args.work, args.reuse)

    bf16_pipe, results["load_bf16_static"] = load_twice(ov_bf16, args.work / "cache-bf16")
    int8_pipe, results["load_int8_static"] = load_twice(ov_int8, args.work / "cache-int8")
    results["openvino_runs"] = {"bf16_static": bf16_pipe.components["unet"].runs, "int8_static": int8_pipe.components["unet"].runs}

    flops = unet_flops_per_call(args.model / "unet" / "config.json", 2 * IMAGES, HEIGHT, WIDTH, 8)
    results["unet_gflop_per_call"] = flops / 1e9
    variants = {
        "torch_fp32": torch_unet(args.model, torch.float32),
        "torch_bf16": torch_unet(args.model, torch.bfloat16),
        "openvino_bf16_static": bf16_pipe.components["unet"],
        "openvino_int8_static": int8_pipe.components["unet"],
    }
    times = interleaved(variants, unet_inputs(), args.rounds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    results["unet"] = {
        name: {"median_s": m, "min_s": min(times[name]), "gflops": flops / m / 1e9, "runs": len(times[name])} for name, m in medians.items()
    }
    results["ratios"] = {
        "openvino_bf16_static_vs_torch_fp32": medians["torch_fp32"] / medians["openvino_bf16_static"],
        "openvino_bf16_static_vs_torch_bf16": medians["torch_bf16"] / medians["openvino_bf16_static"],
        "openvino_int8_static_vs_openvino_bf16_static": medians["openvino_bf16_static"] / medians["openvino_int8_static"],
        "openvino_int8_static_vs_torch_fp32": medians["torch_fp32"] / medians["openvino_int8_static"],
    }
    del variants
    if args.quality:
        results["psnr_vs_torch_fp32_db"] = quality(args.model, {"openvino_bf16_static": bf16_pipe, "openvino_int8_static": int8_pipe}, args.quality)
        results["psnr_steps"] = args.quality

    print(json.dumps(results, indent=2))
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def summary(r: dict) -> str:
    lines = [
        f"CPU {r['machine']['model']} ({r['machine']['logical_cores']} cores; {', '.join(r['machine'].get('isa', []))}); "
        f"OpenVINO capabilities {', '.join(r['machine']['openvino_capabilities'])}",
        f"UNet batch {r['shape']['unet_batch']}, latent {r['shape']['latent']}: {r['unet_gflop_per_call']:.1f} GFLOP per call",
        "| variant | median s | GFLOP/s |",
        "|---|---|---|",
    ]
    for name, u in r["unet"].items():
        runs = r["openvino_runs"].get(name.replace("openvino_", "")) if name.startswith("openvino") else None
        lines.append(f"| {name}{f' (runs {runs})' if runs else ''} | {u['median_s']:.2f} | {u['gflops']:.1f} |")
    lines += [f"{k}: {v:.2f}x" for k, v in r["ratios"].items()]
    for key in ("load_bf16_static", "load_int8_static"):
        load = r[key]
        lines.append(f"{key}: empty cache {load['cold_s']:.1f} s, warm cache {load['warm_s']:.1f} s ({load['speedup']:.1f}x)")
    if "psnr_vs_torch_fp32_db" in r:
        lines.append("PSNR vs torch fp32: " + ", ".join(f"{k} {v:.1f} dB" for k, v in r["psnr_vs_torch_fp32_db"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
