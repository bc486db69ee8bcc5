"""The VAE decoder with and without sdopt's exact rewrite, side by side on every CPU backend (docs/optimize.md).

The decoder of a Diffusers checkpoint is built twice in fp32 — as the checkpoint defines it,
and with sdopt.rewrite applied (nearest-×2 + 3×3 conv → one stride-2 transposed conv) — and
each pair is run by: PyTorch fp32 (eager), ONNX Runtime fp32 (torch.onnx.export as sdopt's
exporter does), OpenVINO (sdopt's converter, weights fp16, at each --hint). One latent of the
--size image, calls interleaved round by round so a slow spell of a shared machine hits both
alike. Prints and writes (--out) the median per variant, the ratio, the largest difference
between the two outputs and the FLOPs torch counts for each.

    .venv/bin/python measure/rewrite_decoder.py /work/runs/sd15 --size 256 --rounds 8 --out docs/measurements/rewrite_decoder_sd15.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _interleaved(calls: dict[str, callable], rounds: int) -> dict[str, float]:
    for call in calls.values():
        call()  # warm-up
    seconds = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Diffusers checkpoint folder (e.g. the sd15 zoo model)")
    parser.add_argument("--size", type=int, default=256, help="image side; the latent is size/8")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--hint", action="append", default=None, help="OpenVINO INFERENCE_PRECISION_HINT (repeatable; default bf16 and f32)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import onnxruntime as ort
    import openvino as ov
    import torch

    from sdopt.bench.flops import vae_decoder_flops
    from sdopt.export.openvino import convert
    from sdopt.export.spec import SPECS, trace_inputs
    from sdopt.machine import fingerprint
    from sdopt.manifest import read_manifest
    from sdopt.rewrite import apply_rewrites
    from sdopt.runtime.torch import forward_of, load_module

    source = Path(args.model)
    manifest = read_manifest(source)
    modules = {"checkpoint": load_module(source, manifest, "vae_decoder", torch.float32)}
    modules["rewritten"] = load_module(source, manifest, "vae_decoder", torch.float32)
    applied = apply_rewrites("vae_decoder", modules["rewritten"])
    latent = np.random.default_rng(0).standard_normal((1, 4, args.size // 8, args.size // 8)).astype(np.float32)
    decode = forward_of("vae_decoder", False)
    spec = SPECS["vae_decoder"]
    results: dict[str, dict] = {}

    def record(backend: str, times: dict[str, float], outputs: dict[str, np.ndarray]) -> None:
        a, b = outputs["checkpoint"], outputs["rewritten"]
        row = {"checkpoint_ms": times["checkpoint"] * 1000, "rewritten_ms": times["rewritten"] * 1000,
               "speedup": times["checkpoint"] / times["rewritten"],
               "max_abs_difference": float(np.abs(a - b).max()), "output_scale": float(np.abs(a).max())}
        results[backend] = row
        print(f"{backend:<22} {row['checkpoint_ms']:8.1f} ms -> {row['rewritten_ms']:8.1f} ms  x{row['speedup']:.3f}  "
              f"max |diff| {row['max_abs_difference']:.2e} of {row['output_scale']:.2f}", flush=True)

    with torch.inference_mode():
        inputs = {"latent_sample": torch.from_numpy(latent)}
        outputs = {k: decode(m, **inputs)["sample"].numpy() for k, m in modules.items()}
        record("torch fp32", _interleaved({k: (lambda m=m: decode(m, **inputs)) for k, m in modules.items()}, args.rounds), outputs)

    with tempfile.TemporaryDirectory() as tmp:
        from sdopt.export.tracing import PositionalComponent

        sessions = {}
        for name, module in modules.items():
            path = Path(tmp) / f"{name}.onnx"
            example = tuple(torch.from_numpy(v) for v in trace_inputs("vae_decoder", manifest.model).values())
            with torch.no_grad():
                torch.onnx.export(PositionalComponent(spec, module).eval(), example, str(path), dynamo=False, opset_version=17,
                                  input_names=spec.input_names, output_names=spec.output_names, dynamic_axes=spec.dynamic_axes())
            sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"latent_sample": latent}
        outputs = {k: s.run(None, feed)[0] for k, s in sessions.items()}
        record("onnxruntime fp32", _interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, args.rounds), outputs)

        core = ov.Core()
        for hint in args.hint or ["bf16", "f32"]:
            compiled = {}
            for name, module in modules.items():
                path = Path(tmp) / f"{name}.xml"
                if not path.exists():
                    ov.save_model(convert(spec, module, trace_inputs("vae_decoder", manifest.model)), path, compress_to_fp16=True)
                model = core.read_model(path)
                model.reshape({model.inputs[0]: ov.PartialShape(list(latent.shape))})
                compiled[name] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            outputs = {k: r.infer({0: latent})[0].copy() for k, r in compiled.items()}
            record(f"openvino {hint}", _interleaved({k: (lambda r=r: r.infer({0: latent})) for k, r in compiled.items()}, args.rounds), outputs)

    config = source / manifest.components["vae_decoder"].folder / "config.json"
    shape = tuple(latent.shape)
    flops = {"checkpoint": vae_decoder_flops(config, shape), "rewritten": vae_decoder_flops(config, shape, rewritten=True)}
    print(f"FLOPs per decode: {flops['checkpoint'] / 1e9:.1f} G -> {flops['rewritten'] / 1e9:.1f} G ({1 - flops['rewritten'] / flops['checkpoint']:.1%} fewer); rewritten: {applied}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(source), "size": args.size, "rounds": args.rounds, "rewrites": applied,
                                              "flops": flops, "results": results, "machine": fingerprint()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
