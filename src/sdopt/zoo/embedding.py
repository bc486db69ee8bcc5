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

    from sdopt.embeddings.tables import table_of
    from sdopt.zoo.synthetic_file import checked_output, save_whole, source_modules

    out = checked_output(out, "an embedding is written as .safetensors, its name the word prompts use", force, model)
    if not 1 <= vectors <= MAX_VECTORS:
        raise SdoptError(f"--vectors {vectors}: give 1 to {MAX_VECTORS}")
    _, manifest, modules = source_modules(model, with_unet=False, verb="make the embedding")
    encoders = manifest.pipeline_family.text_encoders
    generator = torch.Generator().manual_seed(seed)
    keys = SDXL_KEYS if len(encoders) == 2 else {encoders[0]: "emb_params"}
    tensors = {}
    for encoder in encoders:
        table = table_of(modules[encoder]).weight.detach()
        tensors[keys[encoder]] = (torch.randn(vectors, table.shape[1], generator=generator) * table.std() + table.mean(0)).contiguous()
    return save_whole(tensors, out, {"sdopt": f"synthetic embedding, {vectors} vectors, seed {seed}"})
