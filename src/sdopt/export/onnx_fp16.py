"""fp16 ONNX graphs that stay finite: weights and most compute in fp16, the sensitive ops in fp32.

ONNX Runtime's converter rewrites a validated fp32 graph (so what is
converted has already passed parity): inputs and outputs stay float32
(keep_io_types), so every backend's executor feeds the same arrays, and the
ops below keep fp32 with casts around them. Normalizations and softmax
overflow fp16's range on SD activations; that is what turns fp16 VAE decoders'
images black or NaN.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from sdopt.export.onnx import save_graph

FP32_OPS = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "Pow",
    "ReduceMean",
    "Sqrt",
    "Erf",
    "Exp",
    "Sin",
    "Cos",
)


def convert_to_fp16(path: Path) -> dict:
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    model = OnnxModel(onnx.load(str(path), load_external_data=True))
    # Symbolic shape inference: plain ONNX shape inference refuses protos over 2 GB (the sd15 UNet).
    model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True, op_block_list=block)
    for stale in path.parent.glob("model.onnx*"):
        stale.unlink()
    save_graph(model.model, path)
    return {"converter": "onnxruntime.transformers OnnxModel.convert_float_to_float16", "keep_io_types": True, "fp32_ops": block}
