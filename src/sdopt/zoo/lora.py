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
    from safetensors.torch import save_file

    from sdopt.export.run import source_checkpoint
    from dataclasses import replace

    from sdopt.fsutil import check_output_files
    from sdopt.runtime.torch import load_modules

    out = Path(out)
    if out.suffix != ".safetensors":
        raise SdoptError(f"{out}: a LoRA file is written as .safetensors; give a path ending in .safetensors")
    check_output_files([out])
    if out.exists() and not force:
        raise SdoptError(f"{out} exists: pass --force to replace it, or choose another file")
    folder, manifest = source_checkpoint(model)
    family = manifest.pipeline_family
    names = ("unet", *family.text_encoders)
    modules = load_modules(folder, replace(manifest, components={n: manifest.components[n] for n in names}), torch.float32)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in names:
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    save_file(tensors, tmp, metadata={"format": "pt", "sdopt": f"synthetic LoRA, rank {rank}, seed {seed}"})
    tmp.replace(out)  # written whole or not at all
    return out
