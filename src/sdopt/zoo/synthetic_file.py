"""What the zoo's synthetic files (``sdopt init-lora``, ``init-embedding``) share: the output checked before any work,
the source checkpoint's modules they are made for, and the file written whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError


def checked_output(out: str | Path, written_as: str, force: bool, model: str | Path) -> Path:
    """``out`` as a .safetensors path that may be written (``written_as``: "a LoRA file is written as .safetensors"),
    outside ``model``, the checkpoint it is made for."""
    from sdopt.outputs import check_output_files, local_inputs

    out = Path(out)
    if out.suffix != ".safetensors":
        raise SdoptError(f"{out}: {written_as}; give a path ending in .safetensors")
    check_output_files([out], local_inputs(model))
    if out.exists() and not force:
        raise SdoptError(f"{out} exists: pass --force to replace it, or choose another file")
    return out


def source_modules(model: str | Path, with_unet: bool, verb: str) -> tuple[Path, Any, dict[str, Any]]:
    """The checkpoint's folder, manifest, and its text encoders (and UNet) as fp32 torch modules (the others are not loaded).
    ``verb`` says what to do with the original checkpoint when given an exported one ("make the LoRA"), not "export"."""
    from dataclasses import replace

    import torch

    from sdopt.export.run import source_checkpoint
    from sdopt.runtime.torch import load_modules

    folder, manifest = source_checkpoint(model, verb)
    names = ("unet",) * with_unet + manifest.pipeline_family.text_encoders
    return folder, manifest, load_modules(folder, replace(manifest, components={n: manifest.components[n] for n in names}), torch.float32)


def save_whole(tensors: dict[str, Any], out: Path, metadata: dict[str, str]) -> Path:
    """Write the tensors to ``out`` through a partial file renamed at the end: written whole or not at all."""
    from safetensors.torch import save_file

    from sdopt.outputs import files_written_whole

    out.parent.mkdir(parents=True, exist_ok=True)
    with files_written_whole([out]) as (tmp,):  # Ctrl-C, SIGTERM, a full disk: no partial file left beside out
        save_file(tensors, tmp, metadata=metadata)
    return out
