"""--optimize: ONNX Runtime's offline graph optimizations, saved into the artifact.

ORT_ENABLE_EXTENDED fuses what its CPU and CUDA providers know (Gelu,
LayerNorm, MatMul+Add, attention patterns), so the session does not redo that
work at every load. The fused graph is specific to the execution provider it
was optimized for; the manifest records which.

The transformer optimizer's UNet fusions (onnxruntime.transformers.optimizer,
model_type="unet") are not applied: with onnxruntime 1.32 and numpy 2.4 its
attention fusion fails on the TorchScript export (int() of a 1-element array),
and several of its fusions (GroupNorm, NhwcConv, BiasSplitGelu) are CUDA-only.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdopt.export.onnx import EXTERNAL_DATA


def optimize_graph(path: Path, name: str, precision: str) -> dict:
    import onnx
    import onnxruntime as ort

    from sdopt.runtime.onnxruntime import native_path

    external = (path.parent / EXTERNAL_DATA).exists()
    before = _op_count(onnx.load(str(path), load_external_data=False))
    optimized = path.with_name("optimized.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = native_path(optimized)
    if external:  # over 2 GB, ORT must be told to write the weights beside the graph
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx_data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(native_path(path), options, providers=["CPUExecutionProvider"])
    for stale in path.parent.glob("model.onnx*"):
        stale.unlink()
    os.replace(optimized, path)
    if external:
        # The graph names its data file; rewrite the reference so the artifact keeps Optimum's file name.
        model = onnx.load(str(path), load_external_data=True)
        (path.parent / "optimized.onnx_data").unlink()
        from sdopt.export.onnx import save_graph

        save_graph(model, path)
    after = _op_count(onnx.load(str(path), load_external_data=False))
    return {"graph_optimization_level": "ORT_ENABLE_EXTENDED", "optimized_for": "CPUExecutionProvider", "nodes_before": before, "nodes_after": after}


def _op_count(model) -> int:
    return len(model.graph.node)
