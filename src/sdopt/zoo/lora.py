"""A synthetic LoRA for a model (``sdopt init-lora MODEL OUT``): what the tests and the demo fuse and apply.

Real LoRA layout — Diffusers' PEFT format, the one ``pipe.load_lora_weights``
writes and reads: ``unet.<layer>.lora_A.weight`` (rank x in) and
``lora_B.weight`` (out x rank) on every attention projection of the UNet, and
``text_encoder.<layer>...`` (and ``text_encoder_2`` for SDXL) on the text
encoders' attention. Deterministic random weights from the seed, scaled so that
at scale 1 the image visibly changes (each delta about a third of its weight's
spread) — enough for a test to tell "applied" from "not applied".
"""

from __future__ import annotations

from pathlib import Path

from sdopt.errors import SdoptError

RANK = 4
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def write_lora(model: str | Path, out: str | Path, seed: int = 0, rank: int = RANK, force: bool = False) -> Path:
    import torch

    from sdopt.zoo.synthetic_file import checked_output, save_whole, source_modules

    out = checked_output(out, "a LoRA file is written as .safetensors", force, model)
    folder, manifest, modules = source_modules(model, with_unet=True, verb="make the LoRA")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in ("unet", *manifest.pipeline_family.text_encoders):
        targets = _UNET_TARGETS if name == "unet" else _TEXT_TARGETS
        for layer, module in modules[name].named_modules():
            if isinstance(module, torch.nn.Linear) and layer.endswith(targets):
                rows, cols = module.weight.shape
                down = torch.randn(rank, cols, generator=generator) / cols**0.5
                up = torch.randn(rows, rank, generator=generator) * 0.1
                tensors[f"{name}.{layer}.lora_A.weight"] = down.contiguous()
                tensors[f"{name}.{layer}.lora_B.weight"] = up.contiguous()
    if not tensors:
        raise SdoptError(f"{folder}: found no attention projection to put a LoRA on")
    return save_whole(tensors, out, {"format": "pt", "sdopt": f"synthetic LoRA, rank {rank}, seed {seed}"})
