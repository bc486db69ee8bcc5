"""int8 and fp8 TensorRT engines: NVIDIA ModelOpt's quantizers in the UNet, calibrated on the model's own generations.

TensorRT 10 builds int8 and fp8 layers from explicit quantization: QuantizeLinear/DequantizeLinear
pairs in the ONNX graph (its implicit int8 calibrators are deprecated). ModelOpt
(``nvidia-modelopt``, ``modelopt.torch.quantization``) puts fake quantizers into the PyTorch UNet
(int8 weights per output channel, fp8's per tensor; activations per tensor), sets their ranges from the inputs the UNet
sees while the checkpoint generates the calibration prompts (recorded as int8-static records them
for NNCF and ONNX Runtime: sdopt.quant.calibration), and the ONNX exporter writes each quantizer as
a Q/DQ pair: ONNX's own operators for int8, TensorRT's ``trt::TRT_FP8QuantizeLinear`` for fp8. The
builder then gets the precision's flag and FP16 for the layers left unquantized.

Only the UNet is quantized (the denoising loop's cost: ModelOpt's diffusion recipe quantizes the
backbone too); the text encoders and the VAE build in fp16 (the VAE in fp32 where it overflows it).

What runs on any machine: quantizing, calibrating, and the Q/DQ graph run by ONNX Runtime on CPU
and compared with the fake-quantized PyTorch UNet (fp8 through a copy with ONNX's float8 Q/DQ in
TensorRT's operators' place). The engines themselves are unverified (sdopt.tensorrt).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sdopt.errors import require

# The precision -> ModelOpt's configuration for it (activations per tensor; weights per output channel in int8, per tensor in fp8).
CONFIGS = {"int8": "INT8_DEFAULT_CFG", "fp8": "FP8_DEFAULT_CFG"}
QUANTIZED = ("unet",)  # the components that get Q/DQ; the others build in fp16
# The Q/DQ graph in ONNX Runtime against the fake-quantized PyTorch UNet it was traced from, relative to the
# output's largest value. Not a float tolerance: where an activation lands within a rounding step of a
# boundary, the two round it to neighbouring codes, and the network carries that on. Measured on the tiny
# zoo model (random weights, which carry it furthest): 0.036 int8. A wrong graph (a missing scale, a
# quantizer exported as identity, Q/DQ at another axis) is off by the output's own scale.
TOLERANCE = {"int8": 0.15, "fp8": 0.15}
_FP8_ZERO = "sdopt_fp8_zero_point"


def modelopt_quantization():
    """``modelopt.torch.quantization``, or the error naming the extra to install. Imported with bitsandbytes kept
    off the network (ModelOpt imports it: sdopt._offline) and without ModelOpt's notice about untested
    transformers versions (it quantizes a Diffusers UNet, not a transformers model)."""
    import sdopt._offline  # noqa: F401  before ModelOpt imports bitsandbytes

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is not tested with current version of modelopt")
        return require("modelopt.torch.quantization", "modelopt")


class ModelOptQuantizer:
    """The ONNX exporter's quantizer (sdopt.export.onnx.Quantizer) for a TensorRT int8/fp8 export."""

    names = QUANTIZED

    def __init__(self, precision: str, samples: list[dict[str, np.ndarray]], calibration: dict[str, Any], device: str = "cpu"):
        self.precision, self.samples, self.device, self.tolerance = precision, samples, device, TOLERANCE[precision]
        self.calibration = calibration  # the manifest's record of what the samples came from (calibration.calibration_record)

    def apply(self, spec, module) -> dict[str, Any]:
        return quantize(spec, module, self.samples, self.precision, self.device)

    def runnable(self, path: Path, scratch: Path) -> Path:
        return runnable_by_onnxruntime(path, self.precision, scratch)

    def component_record(self, applied: dict[str, Any]) -> dict[str, Any]:
        """A quantized component's manifest record (ComponentEntry.quantization), from what ``apply`` returned."""
        return {"scheme": f"{self.precision}-static", "backend": "modelopt", **applied, "calibration": self.calibration}


def calibration_device() -> str:
    """Where calibration runs: the GPU the engines are built for when torch sees one (sd15's UNet calibrates in
    seconds there, minutes on a CPU), else the CPU (the suite's, and the measure script's)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fp32(tensor):
    """A recorded input as the fp32 module takes it: a checkpoint that generates in fp16 records fp16 inputs."""
    return tensor.float() if tensor.is_floating_point() else tensor


def quantize(spec, module, samples: list[dict[str, np.ndarray]], precision: str, device: str = "cpu") -> dict[str, Any]:
    """Put ModelOpt's ``precision`` quantizers into ``module`` (in place) and calibrate them on ``samples`` (the
    UNet's recorded inputs) on ``device``; the module is left on the CPU, where the ONNX exporter traces it.
    The record the manifest keeps of it."""
    import torch

    from sdopt.export.tracing import forward_of, text_layers

    mtq = modelopt_quantization()
    forward = forward_of(spec.name, text_layers(spec))

    def calibrate(model) -> None:
        with torch.no_grad():
            for sample in samples:
                forward(model, **{k: _fp32(torch.from_numpy(v)).to(device) for k, v in sample.items()})

    config = CONFIGS[precision]
    module.to(device)
    with contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints "Inserted N quantizers" (the record says how many)
        mtq.quantize(module, getattr(mtq, config), forward_loop=calibrate)
    module.to("cpu")
    quantizers = [m for m in module.modules() if type(m).__name__ == "TensorQuantizer"]
    from importlib.metadata import version

    return {
        "library": f"nvidia-modelopt {version('nvidia-modelopt')}",
        "config": config,
        "calibrated_on_device": device,
        "quantizers": sum(1 for q in quantizers if q.is_enabled),
        "calibrated_on": len(samples),
    }


def runnable_by_onnxruntime(path: Path, precision: str, folder: Path) -> Path:
    """A graph ONNX Runtime runs: ``path`` itself for int8 (ONNX's Q/DQ); for fp8 a copy in ``folder`` with
    TensorRT's fp8 Q/DQ turned into ONNX's (opset 19 or the graph's own if later, float8e4m3fn zero points), which ONNX Runtime runs on CPU."""
    if precision != "fp8":
        return path
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    quantized = set()
    for node in graph.node:
        if node.domain == "trt" and node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):
            node.op_type, node.domain = node.op_type.replace("TRT_FP8", ""), ""
            if node.op_type == "QuantizeLinear":
                node.input.append(_FP8_ZERO)  # its type is the output's: float8e4m3fn
                quantized.update(node.output)
    graph.initializer.append(helper.make_tensor(_FP8_ZERO, TensorProto.FLOAT8E4M3FN, [], [0.0]))
    kept = [v for v in graph.value_info if v.name not in quantized]  # the exporter typed them uint8
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx_opset = max([o.version for o in model.opset_import if o.domain == ""] + [19])  # --opset 20, 21: not lowered (Gelu is 20's)
    opsets = [o for o in model.opset_import if o.domain not in ("", "trt")]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", onnx_opset), *opsets])
    copy = folder / "model.onnx"
    onnx.save_model(model, str(copy), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data")
    return copy
