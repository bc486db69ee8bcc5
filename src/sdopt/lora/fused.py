"""A fused copy of a checkpoint: what `sdopt quantize --lora` quantizes."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from sdopt.lora import LoraFile, notes_of
from sdopt.lora.apply import fuse


def fused_checkpoint(source, manifest, loras: list[LoraFile], into) -> list[str]:
    """Write ``source`` (a Diffusers checkpoint) into the folder ``into`` with the LoRAs fused in: what a
    quantizer reads when `sdopt quantize --lora` is given. Untouched components are copied as they are."""
    from sdopt.layouts import DIFFUSERS_FOLDERS, write_torch_manifest
    from sdopt.manifest import tokenizer_folders
    from sdopt.runtime.torch import load_modules
    from sdopt.zoo.writer import canonical_text_encoder_keys, without_transformers_progress_bar

    source, into = Path(source), Path(into)
    family = manifest.pipeline_family
    modules = load_modules(source, manifest, torch.float32)
    touched = fuse(modules, family, loras)
    for sub in {*tokenizer_folders(manifest), manifest.scheduler, *(DIFFUSERS_FOLDERS[n] for n in manifest.components if n not in touched)}:
        shutil.copytree(source / sub, into / sub)
    shutil.copy2(source / "model_index.json", into / "model_index.json")
    for name in touched:
        with without_transformers_progress_bar():
            modules[name].save_pretrained(into / DIFFUSERS_FOLDERS[name], safe_serialization=True)
        if name.startswith("text_encoder"):
            canonical_text_encoder_keys(into / name / "model.safetensors")
    write_torch_manifest(into, source={"path": str(source.resolve())}, notes=notes_of(loras))
    return touched
