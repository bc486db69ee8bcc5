"""Loading quantized components of a torch artifact (written by `sdopt quantize`).

torch_.load_modules hands every component whose manifest entry has a
``quantization`` record to ``load_quantized``. Two cases, as the record says:

- ``serialized: true``: the folder holds the backend's quantized weights
  (safetensors, with the backend's own metadata and the list of quantized
  layers). The module is built empty from its config.json (no weights are
  allocated) and the quantizer's ``deserialize`` hook fills it: nothing is
  quantized again and the full-precision weights are not needed.
- ``serialized: false``: the folder holds the original weights and the record
  holds the recipe; the module is loaded and quantized here, choosing the same
  layers as the quantize command did.

The layer selection and the empty skeletons live here because both the
quantize command (sdopt.quant.torch_common) and the loader use them.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable

import torch

from sdopt.errors import SdoptError
from sdopt.manifest import ComponentEntry

# The key in a quantized safetensors file's metadata that lists the quantized layers.
LAYERS_KEY = "sdopt_layers"


def module_class(name: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel, "vae_decoder": AutoencoderKL, "vae_encoder": AutoencoderKL}[name]


def load_pretrained(name: str, path: Path) -> torch.nn.Module:
    """The full-precision module, as torch_.load_modules loads it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls = module_class(name)
    dtype_arg = "torch_dtype" if _is_diffusers(cls) else "dtype"  # Transformers 5 renamed it
    return cls.from_pretrained(path, use_safetensors=True, **{dtype_arg: torch.float32})


def _is_diffusers(cls) -> bool:
    return hasattr(cls, "load_config")  # Diffusers' ConfigMixin; Transformers models read a config_class


def empty_module(name: str, path: Path) -> torch.nn.Module:
    """The module's structure from its config.json, parameters on the meta device (no memory).

    Buffers stay real (accelerate's default): they are not all in state dicts
    (CLIP's position_ids is not persistent), so they must keep their values.
    """
    from accelerate import init_empty_weights

    cls = module_class(name)
    if _is_diffusers(cls):
        config = cls.load_config(path)
        with init_empty_weights():
            return cls.from_config(config)
    config = cls.config_class.from_pretrained(path)
    with init_empty_weights():
        return cls._from_config(config, dtype=torch.float32)


def select_layers(module: torch.nn.Module, layer_types: Iterable[str], exclude: Iterable[str] = (), prefix: str = "") -> list[str]:
    """Qualified names of the layers to quantize: the given torch.nn types, less the excluded.

    A pattern (fnmatch) is tested against the layer's name inside its component
    (``down_blocks.0.resnets.0.conv1``) and with the component's folder in
    front (``unet.down_blocks.0.resnets.0.conv1``), so ``unet.conv_in`` and
    ``*.attn2.*`` both work.
    """
    types = tuple(getattr(torch.nn, t) for t in layer_types)
    patterns = tuple(exclude)
    return [
        fqn
        for fqn, m in module.named_modules()
        if fqn and isinstance(m, types) and not any(fnmatch(fqn, p) or fnmatch(f"{prefix}.{fqn}", p) for p in patterns)
    ]


def load_quantized(name: str, artifact: Path, entry: ComponentEntry, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The quantized module of one component folder, ready for a TorchComponent."""
    from sdopt.quant import get_quantizer
    from sdopt.quant.schemes import lookup

    quant, path = entry.quantization or {}, artifact / entry.folder

    if dtype != torch.float32:
        raise SdoptError(
            f"{name} holds {quant.get('scheme')} weights, which run with fp32 activations; "
            "load the artifact without --precision (or with fp32)"
        )
    backend, scheme = quant.get("backend", "?"), quant.get("scheme", "?")
    capability = lookup(backend, scheme, device)  # this library cannot run it on that device: say why
    hooks = get_quantizer(backend).implementation()
    if quant.get("serialized"):
        weights = artifact / quant["weights"]
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(weights, "pt") as f:
            metadata = f.metadata() or {}
        if LAYERS_KEY not in metadata:
            raise SdoptError(f"{weights} lacks its list of quantized layers: it was not written by `sdopt quantize`; quantize again")
        layers = json.loads(metadata[LAYERS_KEY])
        module = hooks.deserialize(empty_module(name, path), load_file(weights), metadata, capability, layers, device)
    else:
        module = load_pretrained(name, path)
        layers = select_layers(module, capability.layers, quant.get("exclude", ()), prefix=path.name)
        if len(layers) != quant.get("layers", len(layers)):
            raise SdoptError(
                f"{name}: the recipe chose {quant.get('layers')} layers when quantized, {len(layers)} now "
                f"(another {backend} or model code version?); quantize the original checkpoint again"
            )
        module = hooks.quantize(module, capability, layers, device)
    check_materialized(module, name)
    return module.eval()


def check_materialized(module: torch.nn.Module, name: str) -> None:
    """Every parameter and buffer must hold data: a meta tensor left means the file lacked it."""
    empty = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if empty:
        raise SdoptError(
            f"{name}: the quantized weights file lacks {len(empty)} tensor(s) ({', '.join(empty[:3])}...): "
            "the artifact is incomplete; quantize it again"
        )
