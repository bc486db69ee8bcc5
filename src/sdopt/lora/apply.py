"""LoRA adapters on a pipeline's torch modules, through Diffusers' loaders and PEFT.

The family names the Diffusers loader mixin that reads its LoRA files (SD's or
SDXL's, which knows text_encoder_2); its class methods load a file's layers into
the UNet and each text encoder as a named PEFT adapter, without a Diffusers
pipeline object.
"""

from __future__ import annotations

import contextlib

import torch

from sdopt.errors import SdoptError, exception_line, require
from sdopt.lora import LoraFile
from sdopt.runtime.library_lock import holding_library_lock, without_loading_bars


def _loader(family):
    require("peft", "lora")
    from diffusers.loaders import lora_pipeline

    return getattr(lora_pipeline, family.lora_loader)


@contextlib.contextmanager
def _quiet():
    """Diffusers logs a line per component a LoRA has no keys for; that is normal (a UNet-only LoRA). PEFT warns, on a
    second adapter, that the module already has a peft_config: sdopt loads several on purpose, one per file. Diffusers
    also logs, as an error, the exception of a LoRA that does not fit ("Loading lora0 was unsuccessful ...") before
    raising it: load_adapter says that itself, so only a critical line shows. PEFT warns, wrapping a torchao layer,
    that merge() would fail without a TorchAoConfig: sdopt never merges a per-request LoRA (fusing is done before
    quantizing), and the warning came on every generate with a LoRA on a torchao artifact. PEFT warns, as Diffusers
    deletes the adapter of a LoRA that did not fit, that another adapter (by sdopt's internal name) is now the active
    one: the refusal says what went wrong, and the next request sets its own adapters. Transformers draws a "Loading
    weights" bar for a text encoder's LoRA: not in library use, nor through generate --quiet."""
    import warnings

    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(dlogging.CRITICAL)
    try:
        with warnings.catch_warnings(), without_loading_bars():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without `get_apply_tensor_subclass`")
            warnings.filterwarnings("ignore", message=r"Adapter \S+ was active which is now deleted")
            yield
    finally:
        dlogging.set_verbosity(level)


def adapters_of(module: torch.nn.Module) -> set[str]:
    return set(getattr(module, "peft_config", None) or {})


# LyCORIS' other adapter kinds, by a key part each of their files has: Diffusers' LoRA loaders read none of them (they said
# "The following keys have not been correctly renamed", which sdopt passed on as a LoRA for another architecture).
_LYCORIS = {".hada_w1_": "LoHa", ".lokr_w1": "LoKr", ".oft_": "OFT"}


def _lycoris_kind(lora: LoraFile) -> str | None:
    """The LyCORIS kind of this file's adapters (LoHa, LoKr, OFT) where its keys say so; None otherwise, and for a file
    that cannot be read (load_adapter says why)."""
    from safetensors import safe_open

    try:
        with safe_open(str(lora.path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not safetensors: Diffusers' loader fails on it, and load_adapter says so
        return None
    return next((kind for part, kind in _LYCORIS.items() if any(part in key for key in keys)), None)


# A line of torch's load_state_dict error that names no layer: the next one ("size mismatch for ...") says what is wrong.
_HEADINGS = ("Error(s) in loading state_dict",)


@holding_library_lock  # PEFT builds the adapter layers as the loads do (sdopt.runtime.library_lock)
def load_adapter(modules: dict[str, torch.nn.Module], family, lora: LoraFile, name: str) -> list[str]:
    """Load one LoRA file as adapter ``name`` into the UNet and text encoders; the components it touched."""
    loader = _loader(family)
    kind = _lycoris_kind(lora)
    if kind:
        raise SdoptError(f"LoRA {lora.path.name} is a LyCORIS {kind} file, which Diffusers' LoRA loaders (and so sdopt) do not read: "
                         "give a LoRA (Diffusers/PEFT or kohya format), or merge this one into the checkpoint with LyCORIS' tools and use that")
    try:
        with _quiet():
            # weight_name: Diffusers 0.37 guesses the file's name, even of a path to the file, and under HF_HUB_OFFLINE
            # refuses to ("you must specify a `weight_name`"), which read as a LoRA that does not fit the model
            state, alphas = loader.lora_state_dict(str(lora.path), weight_name=lora.path.name)
            if not state:
                raise SdoptError(f"{lora.path} holds no LoRA weights Diffusers recognises")
            if any(k.startswith("unet.") for k in state) or not any("." in k and k.split(".")[0].startswith("text_encoder") for k in state):
                loader.load_lora_into_unet(state, alphas, modules["unet"], adapter_name=name)
            for encoder in family.text_encoders:
                if any(k.startswith(f"{encoder}.") for k in state):
                    loader.load_lora_into_text_encoder(state, alphas, modules[encoder], prefix=encoder, adapter_name=name)
    except SdoptError:
        raise
    except OSError as exc:  # Diffusers' "Unable to load weights from checkpoint file": not a safetensors file inside
        raise SdoptError(f"LoRA {lora.path} cannot be read as safetensors ({exception_line(exc, most=200)}): give a .safetensors LoRA file") from exc
    except (ValueError, KeyError, RuntimeError) as exc:  # a file for another architecture or family
        raise SdoptError(
            f"LoRA {lora.path.name} does not fit this {family.title} model ({type(exc).__name__}: {exception_line(exc, most=200, skip=_HEADINGS)}): "
            "use a LoRA trained for this model's architecture"
        ) from exc
    touched = [n for n in ("unet", *family.text_encoders) if name in adapters_of(modules[n])]
    if not touched:
        raise SdoptError(f"LoRA {lora.path.name} changed no layer of this model: it was trained for another architecture")
    return touched


def remove_adapter_layers(component: str, module: torch.nn.Module) -> None:
    """Put every LoRA layer's base layer back (a fused adapter's weights stay merged in it)."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

    module.unload_lora() if component == "unet" else _remove_text_encoder_monkey_patch(module)


def delete_adapter(modules: dict[str, torch.nn.Module], family, name: str) -> None:
    """Remove adapter ``name``'s layers and weights from every module that has it; the other adapters stay."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for component in ("unet", *family.text_encoders):
        module = modules[component]
        if name in adapters_of(module):
            module.delete_adapters([name]) if component == "unet" else delete_adapter_layers(module, name)


def set_scales(modules: dict[str, torch.nn.Module], family, scales: dict[str, float]) -> None:
    """Activate the named adapters at these scales on every module that has them; none: the base weights."""
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder, set_adapters_for_text_encoder

    for name in ("unet", *family.text_encoders):
        module = modules[name]
        have = adapters_of(module)
        if not have:
            continue
        active = {a: s for a, s in scales.items() if a in have}
        is_unet = name == "unet"
        if not active:
            module.disable_lora() if is_unet else disable_lora_for_text_encoder(module)
            continue
        if is_unet:
            module.enable_lora()
            module.set_adapters(list(active), list(active.values()))
        else:
            enable_lora_for_text_encoder(module)
            set_adapters_for_text_encoder(list(active), module, list(active.values()))


def fuse(modules: dict[str, torch.nn.Module], family, loras: list[LoraFile]) -> list[str]:
    """Merge the LoRAs, at their scales, into the modules' weights and remove the adapter layers:
    the modules are plain Diffusers/Transformers modules again, ready to export or quantize."""
    from diffusers.loaders.lora_base import fuse_text_encoder_lora

    names = [f"lora{i}" for i in range(len(loras))]
    touched: set[str] = set()
    for lora, name in zip(loras, names):
        touched.update(load_adapter(modules, family, lora, name))
    set_scales(modules, family, dict(zip(names, (l.scale for l in loras))))
    with torch.no_grad():
        for component in touched:
            module = modules[component]
            mine = [n for n in names if n in adapters_of(module)]
            if component == "unet":
                module.fuse_lora(adapter_names=mine)
            else:
                fuse_text_encoder_lora(module, adapter_names=mine)
            remove_adapter_layers(component, module)
    return sorted(touched)
