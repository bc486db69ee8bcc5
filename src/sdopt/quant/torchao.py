"""torchao: quantized weights as tensor subclasses, applied with ``quantize_`` and one config per layer type.

torchao's int8 tensor (Int8Tensor) implements linear but not convolution, and
its intx tensor (IntxUnpackedToInt8Tensor) implements both; so int8 puts
Int8Tensor on Linear layers (int8 weight-only matmul kernels) and the intx one
on Conv2d, which hold two thirds of an SD UNet's weights. fp8 covers Linear
only: torchao's fp8 convolution needs the mslk CUDA kernels.

Saved with torchao's safetensors support (``flatten_tensor_state_dict``):
each subclass is written as its plain tensors plus a JSON description in the
file's metadata, and rebuilt by ``unflatten_tensor_state_dict`` at load, with
no pickles and no second quantization.
"""

from __future__ import annotations

import torch

from sdopt.errors import SdoptError
from sdopt.quant.schemes import Capability
from sdopt.quant.torch_weights import TorchWeights


def configs(scheme: str) -> dict[type, object]:
    """Layer type -> the torchao config ``quantize_`` applies to it, for one scheme."""
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerAxis,
        PerRow,
    )

    # set_inductor_config=False: these configs otherwise change torch._inductor's global settings.
    conv = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return {
        "int8": {torch.nn.Linear: Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False), torch.nn.Conv2d: conv},
        "int8-dynamic": {torch.nn.Linear: Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False), torch.nn.Conv2d: conv},
        "fp8": {torch.nn.Linear: Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)},
    }[scheme]


class TorchaoWeights(TorchWeights):
    # Int8Tensor and IntxUnpackedToInt8Tensor take fp16/bf16 inputs (checked on CPU: the tiny UNet's int8
    # output in fp16 within 0.2% of its fp32-activation output, in bf16 within 2%; tests/test_quant.py);
    # Float8Tensor's recipes are made for bf16 inputs (a CUDA-only row: not checked without a GPU).
    half_activations = True

    def recipe(self, module: torch.nn.Module, capability: Capability, layers: list[str]) -> dict:
        # The configs' own repr (every field, torchao's defaults included): what ran, not a description of it.
        return {layer_type.__name__: repr(config) for layer_type, config in configs(capability.scheme).items()}

    def quantize(self, module: torch.nn.Module, capability: Capability, layers: list[str], device: str) -> torch.nn.Module:
        from torchao.quantization import quantize_

        module.to(device)
        chosen = set(layers)
        for layer_type, config in configs(capability.scheme).items():
            quantize_(module, config, filter_fn=lambda m, fqn, t=layer_type: fqn in chosen and type(m) is t)
        left = [n for n, m in module.named_modules() if n in chosen and type(m.weight) in (torch.Tensor, torch.nn.Parameter)]
        if left:  # a layer type the table declares but no config above covers: a bug, said plainly
            raise SdoptError(f"torchao left {len(left)} chosen layer(s) unquantized ({', '.join(left[:3])})")
        return module

    def serialize(self, module: torch.nn.Module, capability: Capability) -> tuple[dict, dict[str, str]]:
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        return flatten_tensor_state_dict(module.state_dict())

    def deserialize(self, skeleton: torch.nn.Module, tensors: dict, metadata: dict[str, str], capability: Capability, layers: list[str], device: str) -> torch.nn.Module:
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
        if leftover:
            raise SdoptError(f"the quantized weights hold {len(leftover)} tensor(s) torchao does not describe ({', '.join(list(leftover)[:3])}): quantize the checkpoint again")
        # assign=True puts the tensor subclasses themselves in place of the skeleton's meta parameters.
        skeleton.load_state_dict(state, strict=True, assign=True)
        return skeleton.to(device)
