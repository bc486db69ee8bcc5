"""Which embeddings go into a model, by one rule for export and for loading at run time.

An embedding that cannot be used — its word already another file's, its word read as another's tokens, made for
another model, or (an exported artifact) not fused at export — is refused when it was named, and left out as
AUTOMATIC1111 skips it when it was found in a folder given (or always, where the caller asks: a server's folder).
"""

from __future__ import annotations

import shlex
import warnings
from typing import Any, Callable

from sdopt.embeddings import Embedding, clashing_words, parse_embeddings
from sdopt.errors import SdoptError


def sort_out(embeddings: list[Embedding], reason_of: Callable[[Embedding], str | None], skip_unfit: bool | None,
             skipped: dict[str, str]) -> list[Embedding]:
    """The embeddings no reason stands against (``reason_of``: why one cannot be used, None when it can). One that cannot
    is left out into ``skipped`` ({word: why}) with ``skip_unfit``, or (None) when it was found in a folder; else refused."""
    kept = []
    for embedding in embeddings:
        reason = reason_of(embedding)
        if reason is None:
            kept.append(embedding)
        elif skip_unfit or (skip_unfit is None and embedding.listed):
            skipped[embedding.name] = reason
        else:
            raise SdoptError(f"embedding {embedding.path.name}: {reason}")
    return kept


def _clash(embedding: Embedding, clashes: dict[str, str]) -> str | None:
    if embedding.name not in clashes:
        return None
    return f"a prompt reads its word as it reads {clashes[embedding.name]!r}, another embedding's (the same tokens): rename one of the files"


def _unfit(embedding: Embedding, widths: dict[str, int]) -> str | None:
    unfit = embedding.fits(widths)
    return f"it does not fit this model: {unfit}" if unfit else None


def _damaged(embedding: Embedding) -> str | None:
    """Why the file's vectors cannot be used (unreadable, NaN or infinite: a training run that diverged), or None; read
    here so that one in a folder is left out like any other unfit file, not a refusal of the whole folder at load."""
    from sdopt.embeddings.tables import vectors_of

    try:
        vectors_of(embedding)
    except SdoptError as exc:
        return str(exc).removeprefix(f"embedding {embedding.path}: ")
    return None


def planned_records(embeddings: list[Embedding], configs: dict[str, dict[str, Any]], tokenizer: Any) -> tuple[list[Embedding], list[dict[str, Any]]]:
    """The embeddings to fuse into text encoders with these config.json files and their manifest records (the ids they
    will have: appended in order after each table's vocab_size), checked before any slow work: one left out is said in
    a warning."""
    widths = {encoder: int(config["hidden_size"]) for encoder, config in configs.items()}
    clashes = clashing_words(tokenizer, embeddings)
    skipped: dict[str, str] = {}
    kept = sort_out(embeddings, lambda e: _clash(e, clashes) or _unfit(e, widths) or _damaged(e), None, skipped)
    for word, reason in skipped.items():
        warnings.warn(f"embedding {word} left out: {reason}", UserWarning, stacklevel=2)
    next_ids = {encoder: int(config["vocab_size"]) for encoder, config in configs.items()}
    records = []
    for embedding in kept:
        records.append(embedding.record(dict(next_ids)))
        next_ids = {encoder: first + embedding.vectors for encoder, first in next_ids.items()}
    return kept, records


def to_load(paths: list, have: list[dict[str, Any]], tokenizer: Any, backend: str, widths: dict[str, int] | None,
            skip_unfit: bool | None) -> tuple[list[Embedding], dict[str, str]]:
    """The embeddings of ``paths`` to load into a pipeline that holds ``have`` (its manifest's records, then those
    added), and {word: why} of those left out. ``widths``: its text encoders' token widths where it loads embeddings at
    run time (torch), None where it reads only those fused at export. A file already in (the same sha256) is neither."""
    from sdopt.file_reading import sha256_file

    skipped: dict[str, str] = {}
    found = parse_embeddings(paths, skipped if skip_unfit is not False else None)
    if skip_unfit is False and skipped:
        raise SdoptError(f"embedding {next(iter(skipped))}: {next(iter(skipped.values()))}")
    known = {e["name"].lower(): e for e in have}
    found = [e for e in found if not ((k := known.get(e.name.lower())) and k["sha256"] == sha256_file(e.path))]  # in already
    clashes = clashing_words(tokenizer, found, [e["name"] for e in have])

    def reason_of(embedding: Embedding) -> str | None:
        if (other := known.get(embedding.name.lower())) is not None:
            return (f"this artifact already has another embedding named {other['name']!r} (from {other['file']}): rename this file "
                    "to use both (the file name is the word)")
        if widths is None:
            return _clash(embedding, clashes) or (
                f"this {backend} artifact reads only the embeddings fused at export: "
                f"export it again with --embedding {shlex.quote(str(embedding.path))}, or generate with the Diffusers checkpoint")
        return _clash(embedding, clashes) or _unfit(embedding, widths) or _damaged(embedding)

    return sort_out(found, reason_of, skip_unfit, skipped), skipped
