"""A synthetic textual inversion embedding for a model (``sdopt init-embedding MODEL OUT``): what the tests and the demo use.

Real file layout — AUTOMATIC1111's safetensors embedding: ``emb_params`` (vectors x width) for a model with one text
encoder, ``clip_l`` and ``clip_g`` for SDXL. Deterministic random vectors from the seed, drawn at the spread of the
model's own token table, so that a prompt naming it visibly changes the image: enough for a test to tell "read" from
"not read". The word a prompt uses is the file's name (sdopt.embeddings).
"""

from __future__ import annotations

from pathlib import Path

from sdopt.embeddings import MAX_VECTORS, SDXL_KEYS
from sdopt.errors import SdoptError

VECTORS = 4


def write_embedding(model: str | Path, out: str | Path, vectors: int = VECTORS, seed: int = 0, force: bool = False) -> Path:
    import torch
    from dataclasses import replace
    from safetensors.torch import save_file

    from sdopt.embeddings.tables import table_of
    from sdopt.export.run import source_checkpoint
    from sdopt.fsutil import check_output_files
    from sdopt.runtime.torch import load_modules

    out = Path(out)
    if out.suffix != ".safetensors":
        raise SdoptError(f"{out}: an embedding is written as .safetensors, its name the word prompts use; give a path ending in .safetensors")
    if not 1 <= vectors <= MAX_VECTORS:
        raise SdoptError(f"--vectors {vectors}: give 1 to {MAX_VECTORS}")
    check_output_files([out])
    if out.exists() and not force:
        raise SdoptError(f"{out} exists: pass --force to replace it, or choose another file")
    folder, manifest = source_checkpoint(model)
    encoders = manifest.pipeline_family.text_encoders
    modules = load_modules(folder, replace(manifest, components={n: manifest.components[n] for n in encoders}), torch.float32)
    generator = torch.Generator().manual_seed(seed)
    keys = SDXL_KEYS if len(encoders) == 2 else {encoders[0]: "emb_params"}
    tensors = {}
    for encoder in encoders:
        table = table_of(modules[encoder]).weight.detach()
        tensors[keys[encoder]] = (torch.randn(vectors, table.shape[1], generator=generator) * table.std() + table.mean(0)).contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    save_file(tensors, tmp, metadata={"sdopt": f"synthetic embedding, {vectors} vectors, seed {seed}"})
    tmp.replace(out)  # written whole or not at all
    return out
