"""bitsandbytes: Linear layers replaced by Linear8bitLt (int8) or Linear4bit (nf4), Conv2d by Conv2d4bit (nf4).

bitsandbytes 0.50 runs both on the CPU (the table's rows say so because we
tried: it does not refuse). It has no quantized convolution, and Conv2d holds
two thirds of the UNet's weights, so for nf4 the convolutions get
``Conv2d4bit`` below: the same nf4 weight (bitsandbytes' ``Params4bit``,
blocks of 64, nested statistics) dequantized by bitsandbytes at each call and
convolved in fp32. int8 stays Linear-only (torchao and quanto cover
convolutions in int8).

Saved as the modules' own state dicts: int8 weights with their per-row scales
(``SCB``); nf4 weights packed two per byte with their quantization state
(``weight.absmax``, ``weight.quant_map``, ``weight.quant_state.*``), which
``Params4bit.from_prequantized`` reads back. Loading rebuilds those layers from
the stored tensors directly: nothing is quantized again.

Two CPU paths for Linear4bit. On a CPU with AVX-512-BF16, bitsandbytes
(``Linear4bit.support_avx512bf16_for_cpu``, from ``has_avx512bf16()``) repacks
a layer's weight at its first forward into a layout for its bf16 kernel, which
runs the matmul with bf16 activations; elsewhere it dequantizes and multiplies
in fp32. The repacking needs whole blocks along the input (``in_features`` a
multiple of the block, 64) and output rows in groups of 32, and fails with a
reshape error otherwise (the tiny model's 32-wide layers). ``choose_cpu_path``
keeps bitsandbytes' choice for the layers that fit and turns it off for the
others; the manifest lists those (``portable_layers``). The saved file always
holds the portable layout: ``serialize`` runs before any forward, and refuses
a repacked layer rather than store a layout that only one kind of CPU reads.
Which path is faster, and by how much: docs/quantization.md.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from sdopt.errors import SdoptError
from sdopt.quant.schemes import Capability
from sdopt.quant.torch_weights import TorchWeights


@dataclass(frozen=True)
class Int8Recipe:
    """LLM.int8 weights: ``Linear8bitLt`` with int8 weights (no fp16 copy) and no outlier decomposition."""

    has_fp16_weights: bool = False
    threshold: float = 0.0


@dataclass(frozen=True)
class Nf4Recipe:
    """4-bit NormalFloat in blocks, with the block scales themselves quantized (nested statistics)."""

    quant_type: str = "nf4"
    blocksize: int = 64
    compress_statistics: bool = True
    compute_dtype: str = "float32"  # a torch dtype name


INT8, NF4 = Int8Recipe(), Nf4Recipe()  # what quantize and deserialize build, and what the manifest records


class Conv2d4bit(torch.nn.Conv2d):
    """A Conv2d whose weight is a bitsandbytes nf4 ``Params4bit``, dequantized for each call.

    The dequantized weight lives only during the call, so resident memory holds
    the 4-bit weight (~4.1 bits a weight with its 8-bit block scales). Saved like
    Linear4bit: the packed weight plus its quantization state under ``weight.*``.

    The weight is quantized flattened to (out_channels, in_channels/groups x kh x kw):
    bitsandbytes' CPU dequantize kernel refuses an odd last dimension (a 3x3
    kernel's 3) and falls back to a torch.compile'd path that recompiles per
    shape, gives up after 8 shapes and runs eagerly, slower and with a warning
    per shape (measured in docs/quantization.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One path on every CPU: bitsandbytes' dequantize kernel does not branch on AVX-512 at blocks of 64.
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(self.weight.data, self.weight.quant_state)
        weight = weight.view(self.out_channels, self.in_channels // self.groups, *self.kernel_size).to(x.dtype)
        return self._conv_forward(x, weight, self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, v in self.weight.quant_state.as_dict(packed=True).items():
            destination[prefix + "weight." + k] = v if keep_vars else v.detach()


def _empty_layer(scheme: str, old: torch.nn.Module) -> torch.nn.Module:
    """The bnb layer that replaces ``old``, with no memory behind its weight (it is replaced right after)."""
    import bitsandbytes as bnb
    from accelerate import init_empty_weights

    bias = old.bias is not None
    with init_empty_weights():
        if isinstance(old, torch.nn.Conv2d):
            return Conv2d4bit(
                old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                dilation=old.dilation, groups=old.groups, bias=bias, padding_mode=old.padding_mode,
            )
        out_features, in_features = old.weight.shape
        if scheme == "int8":
            return bnb.nn.Linear8bitLt(in_features, out_features, bias=bias, has_fp16_weights=INT8.has_fp16_weights, threshold=INT8.threshold)
        return bnb.nn.Linear4bit(
            in_features, out_features, bias=bias, compute_dtype=getattr(torch, NF4.compute_dtype),
            compress_statistics=NF4.compress_statistics, quant_type=NF4.quant_type,
        )


# bitsandbytes' _convert_weight_packed_for_cpu groups output rows by 32 and reshapes the block
# scales to (out_features, in_features // blocksize): both must divide exactly.
_CPU_PACK_ROWS = 32


def fits_cpu_packing(layer: torch.nn.Module) -> bool:
    """Whether bitsandbytes' AVX-512-BF16 repacking can hold this Linear4bit's weight."""
    state = layer.weight.quant_state
    out_features, in_features = state.shape
    return out_features % _CPU_PACK_ROWS == 0 and in_features % state.blocksize == 0


def portable_layers(module: torch.nn.Module, layers: list[str]) -> list[str]:
    """The nf4 Linear layers bitsandbytes' AVX-512-BF16 repacking cannot hold: decided by shape, the same on every CPU."""
    import bitsandbytes as bnb

    return [fqn for fqn in layers if isinstance(layer := module.get_submodule(fqn), bnb.nn.Linear4bit) and not fits_cpu_packing(layer)]


def choose_cpu_path(module: torch.nn.Module, layers: list[str]) -> None:
    """Keep bitsandbytes' AVX-512-BF16 path only on the nf4 Linear layers it can repack.

    bitsandbytes decides per CPU (its flag is False where the CPU lacks
    AVX-512-BF16, and then every layer takes the portable path anyway); the
    shapes decide per layer (``portable_layers``).
    """
    for fqn in portable_layers(module, layers):
        module.get_submodule(fqn).support_avx512bf16_for_cpu = False


def _replace(root: torch.nn.Module, fqn: str, new: torch.nn.Module) -> None:
    parent_name, _, attr = fqn.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


def _quiet_cast_warning(record: logging.LogRecord) -> bool:
    # bnb logs "inputs will be cast from float32 to float16" on every int8 matmul on the CPU (once per
    # layer per step): the fact is in the capability table; the repetition would drown the CLI's output.
    return "inputs will be cast" not in record.getMessage()


class BnbWeights(TorchWeights):
    def recipe(self, module: torch.nn.Module, capability: Capability, layers: list[str]) -> dict:
        kinds = sorted({type(module.get_submodule(fqn)).__name__ for fqn in layers})
        return {"modules": kinds, **asdict(INT8 if capability.scheme == "int8" else NF4)}

    def quantize(self, module: torch.nn.Module, capability: Capability, layers: list[str], device: str) -> torch.nn.Module:
        import bitsandbytes as bnb

        for fqn in layers:
            old = module.get_submodule(fqn)
            new = _empty_layer(capability.scheme, old)
            if capability.scheme == "int8":
                new.weight = bnb.nn.Int8Params(old.weight.data, requires_grad=False, has_fp16_weights=INT8.has_fp16_weights)
            else:
                data = old.weight.data.flatten(1) if isinstance(new, Conv2d4bit) else old.weight.data
                new.weight = bnb.nn.Params4bit(
                    data, requires_grad=False, quant_type=NF4.quant_type, blocksize=NF4.blocksize, compress_statistics=NF4.compress_statistics, module=new
                )
            if old.bias is not None:
                new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
            _replace(module, fqn, new.to(device))  # bnb quantizes when a float weight moves to its device
        choose_cpu_path(module, layers)
        return module.to(device)

    def serialize(self, module: torch.nn.Module, capability: Capability) -> tuple[dict, dict[str, str]]:
        import bitsandbytes as bnb

        repacked = [n for n, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit) and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
        if repacked:
            # bitsandbytes' own state dict would unpack them, but lossily (it quantizes the block scales
            # again, from bf16): sdopt saves before any forward, so this means a caller ran one first.
            raise SdoptError(f"{len(repacked)} nf4 layer(s) ({', '.join(repacked[:3])}) hold bitsandbytes' CPU-kernel layout after a forward; quantize from the checkpoint again")
        return dict(module.state_dict()), {"bnb_scheme": capability.scheme}

    def manifest_facts(self, module: torch.nn.Module, capability: Capability, layers: list[str]) -> dict:
        """What the manifest records of this component beyond the recipe: the layers kept off the CPU kernel."""
        if capability.scheme != "nf4":
            return {}
        return {
            "cpu_kernel": "bitsandbytes' AVX-512-BF16 nf4 kernel (bf16 activations) where the CPU has it, else dequantize + fp32 matmul",
            "portable_layers": portable_layers(module, layers),
        }

    def deserialize(self, skeleton: torch.nn.Module, tensors: dict, metadata: dict[str, str], capability: Capability, layers: list[str], device: str) -> torch.nn.Module:
        import bitsandbytes as bnb

        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_quiet_cast_warning)  # added once
        mine: set[str] = set()
        for fqn in layers:
            old = skeleton.get_submodule(fqn)
            keys = {k for k in tensors if k.startswith(fqn + ".")}  # a Linear or Conv2d is a leaf: all of these are its own
            weight = tensors.get(f"{fqn}.weight")
            if weight is None:
                raise SdoptError(f"the quantized weights lack {fqn}.weight: quantize the checkpoint again")
            new = _empty_layer(capability.scheme, old)
            if capability.scheme == "int8":
                # Built on the device: Module.to() swaps a parameter's data but leaves Int8Params' CB and
                # SCB attributes where they were, and the CUDA matmul then meets CPU scales (seen on an
                # H100: "Expected a cuda device, but got: cpu").
                weight = weight.to(device)
                new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=INT8.has_fp16_weights, CB=weight, SCB=tensors[f"{fqn}.SCB"].to(device))
            else:
                stats = {k[len(fqn) + len(".weight.") :]: tensors[k] for k in keys if k.startswith(f"{fqn}.weight.")}
                new.weight = bnb.nn.Params4bit.from_prequantized(weight, stats, requires_grad=False, device=device, module=new)
            if old.bias is not None:
                new.bias = torch.nn.Parameter(tensors[f"{fqn}.bias"], requires_grad=False)
            _replace(skeleton, fqn, new)
            mine |= keys
        if capability.scheme == "nf4":
            choose_cpu_path(skeleton, layers)
        rest = {k: v for k, v in tensors.items() if k not in mine}
        result = skeleton.load_state_dict(rest, strict=False, assign=True)
        if result.unexpected_keys:
            raise SdoptError(f"the quantized weights hold tensors the model does not have ({', '.join(result.unexpected_keys[:3])}): quantize the checkpoint again")
        return skeleton.to(device)
