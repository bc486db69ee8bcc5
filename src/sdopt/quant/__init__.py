"""Weight quantizers, registered here with what each declares it can do.

A registration (``Quantizer``) is data: its capability rows
(sdopt.quant.schemes.Capability: which schemes on which device, stored or
not, on which layer types), its options, and the ``module:Class`` of its
engine (sdopt.quant.engine.Engine), the code that does the work. The torch
quantizers (torchao, quanto, bnb) share one engine type,
sdopt.quant.torch_weights.TorchWeights, which also rebuilds their components
when the torch runtime loads an artifact (it asks this registry for the
engine named in the component's ``quantization`` record).

Adding a quantizer is one module with an Engine subclass and one
``register_quantizer`` call below. This module and schemes.py import no torch
and no quantization library: listing and validation stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.registry import Plugin, Registry
from sdopt.quant.schemes import BNB_ROWS, QUANTO_ROWS, TORCHAO_ROWS, Capability, rows


@dataclass(frozen=True, kw_only=True)
class Quantizer(Plugin):
    """A quantization backend (``name`` is the --backend name); ``options`` are its knobs (Plan.options keys)."""

    accepts: str  # the artifact backend it quantizes: "torch", "openvino", ...
    capabilities: tuple[Capability, ...]

    def engine(self):
        """Its sdopt.quant.engine.Engine; a missing library raises an error naming the extra to install."""
        return self.implementation()(self)


@dataclass(frozen=True)
class Plan:
    """A checked request: what to quantize, how, for which device."""

    quantizer: Quantizer
    capability: Capability
    components: tuple[str, ...]  # manifest component names
    exclude: tuple[str, ...] = ()  # fnmatch patterns of layer names kept in full precision
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific knobs (e.g. a group size), recorded
    progress: bool = True  # progress bars (on stderr) while it works; not recorded

    @property
    def scheme(self) -> str:
        return self.capability.scheme


@dataclass
class QuantizedComponents:
    components: dict[str, Any]  # name -> sdopt.manifest.ComponentEntry
    notes: list[str] = field(default_factory=list)
    precision: str | None = None  # the artifact's precision when it differs from the source's


QUANTIZERS: Registry[Quantizer] = Registry("quantization backend", "backends")
register_quantizer = QUANTIZERS.register
get_quantizer = QUANTIZERS.lookup


# --- the registrations ---------------------------------------------------------------
register_quantizer(
    Quantizer(
        name="torchao",
        module="sdopt.quant.torchao:TorchaoWeights",
        extra="quant",
        requires=("torch", "torchao"),
        accepts="torch",
        capabilities=TORCHAO_ROWS,
        description="PyTorch's own quantization library: tensor subclasses, saved with torchao's safetensors support",
    )
)
register_quantizer(
    Quantizer(
        name="quanto",
        module="sdopt.quant.quanto:QuantoWeights",
        extra="quant",
        requires=("torch", "optimum.quanto"),
        accepts="torch",
        capabilities=QUANTO_ROWS,
        description="Hugging Face optimum-quanto: quantized Linear and Conv2d modules, saved with their quantization map",
    )
)
register_quantizer(
    Quantizer(
        name="bnb",
        module="sdopt.quant.bnb:BnbWeights",
        extra="quant",
        requires=("torch", "bitsandbytes"),
        accepts="torch",
        capabilities=BNB_ROWS,
        description="bitsandbytes: LLM.int8 and 4-bit NormalFloat Linear layers",
    )
)
_NOT_CUDA = "OpenVINO runs on Intel CPUs, GPUs and NPUs, not CUDA: for NVIDIA GPUs export to ONNX or TensorRT"
register_quantizer(
    Quantizer(
        name="nncf",
        module="sdopt.quant.nncf:NncfEngine",
        extra="openvino",
        requires=("openvino", "nncf"),
        accepts="openvino",
        options=("group_size", "ratio", "calibration_prompts", "calibration_schedulers", "overflow_fix", "calibration_images"),
        capabilities=rows(
            "nncf",
            ("int8", "cpu", True, True, ("MatMul", "Convolution"), "INT8_ASYM weights per output channel, computed in the artifact's float precision"),
            ("int4", "cpu", True, True, ("MatMul", "Convolution"), "INT4_SYM weights in groups (--group-size, default 128) on --ratio of the layers (default 1.0); the rest int8"),
            ("nf4", "cpu", True, True, ("MatMul", "Convolution"), "NormalFloat4 weights in groups (--group-size, default 128); the rest int8"),
            ("int8-static", "cpu", True, True, ("MatMul", "Convolution"), "UNet weights and activations int8 (int8 kernels), calibrated on a prompt set; other components int8 weights"),
            ("int8", "cuda", False, False, (), _NOT_CUDA),
            ("int4", "cuda", False, False, (), _NOT_CUDA),
            ("nf4", "cuda", False, False, (), _NOT_CUDA),
            ("int8-static", "cuda", False, False, (), _NOT_CUDA),
            calibrated=("int8-static",),
        ),
        description="NNCF on OpenVINO artifacts: weight compression (int8, int4, nf4) and int8 with calibrated activations",
    )
)
register_quantizer(
    Quantizer(
        name="onnxruntime",
        module="sdopt.quant.onnxruntime:OrtQuantEngine",
        extra="onnx",
        requires=("onnx", "onnxruntime"),
        accepts="onnxruntime",
        options=("calibration_prompts", "calibration_schedulers", "overflow_fix", "calibration_images"),
        capabilities=rows(
            "onnxruntime",
            ("int8-static", "cpu", True, True, ("Conv", "MatMul"),
             "UNet (and VAE decoder, when named) weights and activations int8 in QDQ form, calibrated on a prompt set; ONNX Runtime runs its int8 kernels"),
            ("int8-static", "cuda", False, False, (), "ONNX Runtime runs QDQ int8 on NVIDIA GPUs through its TensorRT provider only, which sdopt has not run: on a GPU export fp16 (docs/gpu.md)"),
            calibrated=("int8-static",),
        ),
        description="ONNX Runtime's quantizer on ONNX artifacts: int8 weights and activations, calibrated (QDQ)",
    )
)
