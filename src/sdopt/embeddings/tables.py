"""Embeddings into torch text encoders: each encoder's token table grows by the embedding's vectors.

What Diffusers' load_textual_inversion does to the text encoder (resize_token_embeddings, then the new rows set),
without adding tokens to the tokenizer: sdopt reads the words itself (sdopt.embeddings.vocabulary). Used at run
time on the torch backend and before tracing at export, so an exported text encoder's table holds the rows too.
"""

from __future__ import annotations

from typing import Any

import torch

from sdopt.embeddings import Embedding
from sdopt.errors import SdoptError, exception_line
from sdopt.runtime.library_lock import holding_library_lock


def table_of(module: torch.nn.Module) -> torch.nn.Embedding:
    from sdopt.runtime.compiled import original

    return original(module).get_input_embeddings()


def widths(modules: dict[str, torch.nn.Module], encoders: tuple[str, ...]) -> dict[str, int]:
    """Each text encoder's token width: what an embedding's vectors must be."""
    return {name: table_of(modules[name]).embedding_dim for name in encoders}


def vectors_of(embedding: Embedding) -> dict[str, torch.Tensor]:
    """The embedding's vectors, (vectors, width) per text encoder."""
    from safetensors import safe_open

    try:
        with safe_open(str(embedding.path), framework="pt") as f:
            vectors = {encoder: f.get_tensor(key).reshape(embedding.shapes[encoder]) for encoder, key in embedding.keys.items()}
    except Exception as exc:  # safetensors' SafetensorError, an OSError: the file changed since its header was read
        raise SdoptError(f"embedding {embedding.path}: its vectors cannot be read ({exception_line(exc)}); give the file again") from exc
    # A NaN or infinite vector (a training run that diverged) made every image whose prompt used the word NaN, found
    # only as a broken result after the denoising; the file is what is wrong, so it is refused when read.
    broken = [encoder for encoder, v in vectors.items() if not bool(torch.isfinite(v).all())]
    if broken:
        raise SdoptError(f"embedding {embedding.path}: its vectors hold NaN or infinite values ({', '.join(broken)}): the file is "
                         "damaged or its training diverged; train it again or leave it out")
    return vectors


def grow(module: torch.nn.Module, encoder: str, embeddings: list[Embedding]) -> list[int]:
    """Append each embedding's vectors for ``encoder`` to this text encoder's token table; each one's first id."""
    table = table_of(module)
    _keep_pooling_at_eos(module, table.num_embeddings - 1)
    firsts, rows = [], [table.weight.data]
    count = table.num_embeddings
    for embedding in embeddings:
        firsts.append(count)
        rows.append(vectors_of(embedding)[encoder].to(device=table.weight.device, dtype=table.weight.dtype))
        count += embedding.vectors
    grown = torch.cat(rows)
    table.weight = torch.nn.Parameter(grown, requires_grad=False)
    table.num_embeddings = grown.shape[0]
    return firsts


# Each grown table is a new Parameter, set on its module as a torch load in another thread builds its modules on the meta
# device (accelerate patches register_parameter process-wide): the table went there too, and every generate after failed.
@holding_library_lock
def extend(modules: dict[str, torch.nn.Module], embeddings: list[Embedding], encoders: tuple[str, ...]) -> list[dict[str, Any]]:
    """Append each embedding's vectors to the text encoders' token tables; the manifest records (first ids per encoder).
    The embeddings were sorted out first (sdopt.embeddings.select.to_load: each fits these encoders)."""
    firsts = {encoder: grow(modules[encoder], encoder, embeddings) for encoder in encoders}
    return [embedding.record({encoder: firsts[encoder][i] for encoder in encoders}) for i, embedding in enumerate(embeddings)]


def _keep_pooling_at_eos(module: torch.nn.Module, eos: int) -> None:
    """A CLIP text model whose config says eos_token_id 2 (most checkpoints' configs, written before transformers
    fixed it) pools at the highest token id, which was EOS — the last row of CLIP's table — until the table grew.
    Pooling at the first EOS instead is the same for any prompt without an embedding (padding is EOS or lower) and
    right for one with: SDXL's pooled text embedding is read there (as AUTOMATIC1111, whose embedding placeholders are 0)."""
    from sdopt.runtime.compiled import original

    for part in original(module).modules():
        if getattr(part, "eos_token_id", None) == 2:
            part.eos_token_id = eos
