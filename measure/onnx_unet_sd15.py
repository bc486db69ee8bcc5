"""sd15 UNet, batch 2 (classifier-free guidance), 32x32 latent (256x256 images):
ONNX Runtime fp32 vs PyTorch eager fp32, interleaved in one process, as a ratio.

    python measure/onnx_unet_sd15.py MODEL_DIR ONNX_ARTIFACT [--runs 5]

MODEL_DIR: `sdopt init-model sd15 ...`; ONNX_ARTIFACT: `sdopt export MODEL_DIR --to onnx ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import torch

    from sdopt.export.spec import dummy_inputs
    from sdopt.machine import fingerprint
    from sdopt.manifest import read_manifest
    from sdopt.runtime.onnxruntime import OrtComponent, session_options
    from sdopt.runtime.torch import FORWARDS, load_modules

    manifest = read_manifest(args.model)
    only_unet = dataclasses.replace(manifest, components={"unet": manifest.components["unet"]})
    unet = load_modules(args.model, only_unet, torch.float32)["unet"].eval()
    session = OrtComponent(args.onnx / "unet" / "model.onnx", ["CPUExecutionProvider"], device="cpu",
                           options=session_options(run_settings={"allow_spinning": False}))
    inputs = dummy_inputs("unet", manifest.model, batch=2, height=256, width=256)
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def run_torch():
        with torch.inference_mode():
            return FORWARDS["unet"](unet, **tensors)["out_sample"].numpy()

    def run_ort():
        return session(**inputs)["out_sample"]

    times = {"torch_eager_fp32": [], "onnxruntime_fp32": []}
    ref, got = run_torch(), run_ort()  # warm-up, and parity
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        for name, fn in (("torch_eager_fp32", run_torch), ("onnxruntime_fp32", run_ort)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": {k: fingerprint()[k] for k in ("cpu", "libraries")},
        "shape": {"batch": 2, "latent": [32, 32], "encoder_hidden_states": [2, 77, 768]},
        "torch_threads": torch.get_num_threads(),
        "median_s": medians,
        "all_s": times,
        "speedup_onnxruntime_vs_torch": medians["torch_eager_fp32"] / medians["onnxruntime_fp32"],
        "max_abs_diff": float(np.abs(ref - got).max()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
