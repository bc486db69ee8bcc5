"""The GEGLU rewrite (sdopt.rewrite.geglu) on each runtime: one SD transformer block, as the checkpoint defines it and rewritten.

A Diffusers ``BasicTransformerBlock`` with sd15's widths at the 256² latent's token counts
(320 channels × 1024 tokens, 640 × 256, 1280 × 64; batch 2 for guidance, 77 text tokens of
768) is exported twice to ONNX — as it is, and with its GEGLU split into value and gate
projections — then timed in ONNX Runtime (fp32) and OpenVINO (f32 and bf16), the two
graphs' calls interleaved round by round. Prints the medians, the ratio and the largest
output difference; the block is random-weight (the rewrite's exactness does not depend on
the weights), so this measures speed and agreement only.

    .venv/bin/python measure/rewrite_geglu.py [--rounds 20] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = ((320, 1024), (640, 256), (1280, 64))  # (channels, tokens) of sd15's blocks at a 32×32 latent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import warnings

    import onnxruntime as ort
    import openvino as ov
    import torch
    from diffusers.models.attention import BasicTransformerBlock

    from sdopt.hardware import cpu_flags
    from sdopt.rewrite.geglu import rewrite_geglus

    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.onnx's TorchScript exporter says it is deprecated
    core = ov.Core()
    work = Path(tempfile.mkdtemp(prefix="sdopt-geglu-"))
    result = {"cpu_flags": sorted(cpu_flags()), "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
              "onnxruntime": ort.__version__, "openvino": ov.__version__, "blocks": []}
    for channels, tokens in WIDTHS:
        block = BasicTransformerBlock(channels, 8, channels // 8, cross_attention_dim=768, activation_fn="geglu").eval()  # sd15: 8 heads
        rewritten = copy.deepcopy(block)
        assert rewrite_geglus(rewritten) == 1
        x = torch.randn(2, tokens, channels)
        context = torch.randn(2, 77, 768)
        feeds = {"hidden_states": x.numpy(), "encoder_hidden_states": context.numpy()}
        paths = {}
        for name, module in (("checkpoint", block), ("rewritten", rewritten)):
            paths[name] = work / f"{name}-{channels}.onnx"
            with torch.no_grad():
                torch.onnx.export(module, (x, None, context), str(paths[name]), input_names=list(feeds), output_names=["out"], dynamo=False)
        runs = {}
        for runtime in ("onnxruntime fp32", "openvino f32", "openvino bf16"):
            calls = {}
            for name, path in paths.items():
                if runtime.startswith("onnxruntime"):
                    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    calls[name] = lambda s=session: s.run(None, feeds)[0]
                else:
                    compiled = core.compile_model(core.read_model(path), "CPU",
                                                  {"INFERENCE_PRECISION_HINT": runtime.split()[1], "PERFORMANCE_HINT": "LATENCY"})
                    request = compiled.create_infer_request()
                    calls[name] = lambda r=request: r.infer(feeds)[0].copy()
            outputs = {name: call() for name, call in calls.items()}  # warm-up, and the outputs compared
            seconds = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    seconds[name].append(time.perf_counter() - start)
            before, after = (statistics.median(seconds[n]) * 1e3 for n in ("checkpoint", "rewritten"))
            scale = float(np.abs(outputs["checkpoint"]).max())
            diff = float(np.abs(outputs["checkpoint"] - outputs["rewritten"]).max()) / scale
            runs[runtime] = {"checkpoint_ms": round(before, 3), "rewritten_ms": round(after, 3), "ratio": round(after / before, 3), "max_rel_diff": diff}
            print(f"{channels:5d} ch × {tokens:4d} tokens  {runtime:17s} {before:8.2f} ms -> {after:8.2f} ms  x{after / before:.3f}  max diff {diff:.1e} of scale")
        result["blocks"].append({"channels": channels, "tokens": tokens, "runs": runs})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
