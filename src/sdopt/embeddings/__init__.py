"""Textual inversion embeddings: words a prompt uses that stand for vectors someone trained (AUTOMATIC1111's "embeddings").

An embedding file holds a few vectors per text encoder, learned so that a prompt naming it gets a style, a subject
or — as negative embeddings such as "EasyNegative" — what to steer away from. sdopt reads them as AUTOMATIC1111 does:

- **The word is the file's name** without ``.safetensors`` (AUTOMATIC1111's rule; rename the file to change it).
  A prompt is tokenized as always; where its tokens equal the word's tokens, they are replaced by the embedding's
  vectors, the longest word first — AUTOMATIC1111's EmbeddingDatabase matches token ids the same way — so
  ``easynegative,`` and ``(easynegative:1.2)`` use it. Matching follows the tokenizer's split, as there: CLIP's
  tokens end at a word's end, so in real checkpoints a longer word (``easynegatives``) is not the embedding.
- **Formats, safetensors only** (never pickles: AUTOMATIC1111's ``.pt`` files must be converted): AUTOMATIC1111's
  ``{"emb_params": (n, width)}``; Diffusers' ``{"<token>": (n, width) or (width,)}`` (its ``learned_embeds``); SDXL's
  ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``, one set per text encoder.
- **torch** artifacts take them at run time (``sdopt generate --embedding``, ``sdopt serve --embeddings-dir``,
  ``Pipeline.add_embeddings``): the text encoders' token tables grow by the vectors (sdopt.embeddings.tables).
- **ONNX and OpenVINO** artifacts have them fused at export (``sdopt export --embedding``): the exported text
  encoders' tables hold them, and the manifest records each one's word, file, sha256, vector count and first token
  id (``export.embeddings``), which is all loading needs.

A prompt that does not name an embedding is tokenized exactly as without any (tested). This module reads only the
files' safetensors headers: ``import sdopt`` stays free of torch.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from sdopt.errors import SdoptError
from sdopt.os_text import readable
from sdopt.runtime.emphasis import CHUNK as MAX_VECTORS  # one chunk of a prompt: an embedding longer than that could not be read whole

SDXL_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}  # AUTOMATIC1111's SDXL embedding files
_FLOATS = {"F16", "BF16", "F32", "F64"}
_HEADER_MAX = 100 * 2**20  # safetensors' own bound on a header


@dataclass(frozen=True)
class Embedding:
    """One embedding file: its word, and for each text encoder the tensor that holds its vectors and their shape."""

    name: str
    path: Path
    keys: dict[str, str]  # text encoder -> the tensor's key in the file
    shapes: dict[str, tuple[int, int]]  # text encoder -> (vectors, width)
    listed: bool = False  # found in a folder given (AUTOMATIC1111's embeddings folder), not named as a file

    @property
    def vectors(self) -> int:
        return next(iter(self.shapes.values()))[0]

    def fits(self, widths: dict[str, int]) -> str | None:
        """Why this embedding cannot go into text encoders of these widths (None when it can): AUTOMATIC1111 skips such
        a file, as made for another model."""
        mine = {encoder: shape[1] for encoder, shape in self.shapes.items()}
        if set(mine) != set(widths):
            made_for = "SDXL (clip_l and clip_g vectors)" if len(mine) == 2 else f"a model with one text encoder ({_width_hint(next(iter(mine.values())))} wide)"
            model = "an SDXL model (two text encoders)" if len(widths) == 2 else f"a model with one text encoder ({_width_hint(next(iter(widths.values())))} wide)"
            return f"it was made for {made_for}; this is {model}"
        wrong = {e: w for e, w in mine.items() if w != widths[e]}
        if wrong:
            return ("its vectors are " + ", ".join(f"{_width_hint(w)} wide" for w in wrong.values()) + "; this model's text encoder takes "
                    + ", ".join(_width_hint(widths[e]) for e in wrong))
        return None

    def record(self, first_ids: dict[str, int]) -> dict[str, Any]:
        """What a manifest keeps of an embedding fused into the text encoders: what loading needs to read prompts."""
        from sdopt.file_reading import sha256_file

        return {"name": self.name, "file": readable(self.path.name), "sha256": sha256_file(self.path), "vectors": self.vectors,
                "widths": {encoder: shape[1] for encoder, shape in self.shapes.items()}, "first_ids": first_ids}


def _width_hint(width: int) -> str:
    """A width, and the model family it belongs to where it is a known one: "768 (SD 1.x)"."""
    family = {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL's second encoder"}.get(width)
    return f"{width} ({family})" if family else str(width)


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (tensor names, dtypes, shapes) without reading the tensors, checked to cover the file:
    a truncated or padded file is refused here, not when its vectors are read."""
    try:
        with open(path, "rb") as f:
            size_bytes = f.read(8)
            (size,) = struct.unpack("<Q", size_bytes) if len(size_bytes) == 8 else (0,)
            if not 2 <= size <= _HEADER_MAX:
                raise ValueError("no safetensors header")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("its header is not a table of tensors")
        header.pop("__metadata__", None)
        ends = [info["data_offsets"][1] for info in header.values()]
        if path.stat().st_size != 8 + size + max(ends, default=0):
            raise ValueError("the file is truncated or has bytes its header does not cover")
    except (OSError, ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
        raise SdoptError(f"embedding {path}: cannot be read as safetensors ({exc}); give the .safetensors file of a textual inversion embedding") from exc
    return header


def read_embedding(path: str | Path) -> Embedding:
    """The embedding in one file (its header only), checked to be a format sdopt reads."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SdoptError(f"embedding {path} does not exist: give a textual inversion .safetensors file, or a folder of them")
    if path.suffix.lower() != ".safetensors":
        raise SdoptError(f"embedding {path} is not .safetensors: sdopt reads embeddings from safetensors only, never pickles "
                         "(convert a .pt or .bin with safetensors' save_file, keeping its tensor as emb_params)")
    header = _header(path)
    if "clip_l" in header and "clip_g" in header:
        keys = dict(SDXL_KEYS)
    elif len(header) == 1:
        keys = {"text_encoder": next(iter(header))}
    else:
        raise SdoptError(
            f"embedding {path.name} holds {len(header)} tensors ({', '.join(list(header)[:4])}): sdopt reads AUTOMATIC1111's "
            "(one tensor, emb_params), Diffusers' (one tensor named by its token) and SDXL's (clip_l and clip_g) embedding files"
        )
    shapes = {}
    for encoder, key in keys.items():
        info = header[key]
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or info.get("dtype") not in _FLOATS or len(shape) not in (1, 2) or 0 in shape:
            raise SdoptError(f"embedding {path.name}: its tensor {key!r} is {info.get('dtype') if isinstance(info, dict) else info} {shape}; "
                             "an embedding is floating-point vectors, (vectors, width) or (width,)")
        shapes[encoder] = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    counts = {s[0] for s in shapes.values()}
    if len(counts) != 1:
        raise SdoptError(f"embedding {path.name}: clip_l and clip_g hold different numbers of vectors ({sorted(counts)}); the file is damaged")
    # The word is text, as the prompts that use it are (cli.common.user_text): a name the locale could not decode (стиль.safetensors
    # under LC_ALL=C, PYTHONUTF8=0) held undecoded bytes, which the tokenizer refused with a TypeError traceback.
    embedding = Embedding(readable(path.stem), path, keys, shapes)
    if not 1 <= embedding.vectors <= MAX_VECTORS:
        raise SdoptError(f"embedding {path.name} has {embedding.vectors} vectors; a prompt chunk holds {MAX_VECTORS}, so sdopt reads embeddings of at most that")
    if not embedding.name.strip():
        raise SdoptError(f"embedding {path}: its file name is its word in prompts, and this one has none; rename the file")
    return embedding


def parse_embeddings(items: Iterable[str | Path] | None, skipped: dict[str, str] | None = None) -> list[Embedding]:
    """Embedding files, and every .safetensors file below each folder given (AUTOMATIC1111's embeddings folder), read and
    checked. A file named that cannot be used is refused; one found in a folder is left out, as AUTOMATIC1111 skips it —
    into ``skipped`` ({word: why}) where given, else with a warning. Two files of one word are refused (a prompt could
    not say which it means); one file under two names (a link) is two words."""
    import warnings

    found: list[Embedding] = []
    for item in items or []:
        path = Path(item).expanduser()
        if not path.is_dir():
            found.append(read_embedding(path))
            continue
        # AUTOMATIC1111's folder holds pickled .pt and .bin embeddings too: each is left out saying so, not passed over
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".safetensors", ".pt", ".bin") and p.is_file())
        if not files:
            warnings.warn(f"embeddings folder {path} holds no .safetensors file", UserWarning, stacklevel=2)
        for file in files:
            try:
                found.append(replace(read_embedding(file), listed=True))
            except SdoptError as exc:
                reason = str(exc).removeprefix(f"embedding {file}: ").removeprefix(f"embedding {file} ").removeprefix(f"embedding {file.name} ")
                if skipped is not None:
                    skipped[readable(file.stem)] = reason  # its word, as a readable file's is: serve's JSON refuses undecoded bytes
                else:
                    warnings.warn(f"embedding {file} left out: {reason}", UserWarning, stacklevel=2)
    unique: dict[tuple[Path, str], Embedding] = {}
    words: dict[str, Path] = {}
    for embedding in found:
        word = embedding.name.lower()  # CLIP's tokenizer lowercases: EasyNegative and easynegative are one word
        if word in words and words[word] != embedding.path.resolve():
            raise SdoptError(f"embeddings {words[word]} and {embedding.path} are both the word {embedding.name!r}: rename one of the files "
                             "(the file name is the word)")
        words[word] = embedding.path.resolve()
        unique.setdefault((embedding.path.resolve(), word), embedding)
    return list(unique.values())


def clashing_words(tokenizer: Any, embeddings: list[Embedding], taken: Iterable[str] = ()) -> dict[str, str]:
    """{word: the word it reads as} of embeddings whose word this tokenizer reads as the same tokens as a word before it
    (``taken``, then the earlier embeddings): "my style" and "my  style" are one word to a prompt."""
    seen: dict[tuple[int, ...], str] = {}
    for word in taken:
        seen.setdefault(tuple(tokenizer(word, add_special_tokens=False).input_ids), word)
    clashes = {}
    for embedding in embeddings:
        tokens = tuple(tokenizer(embedding.name, add_special_tokens=False).input_ids)
        if tokens in seen and seen[tokens].lower() != embedding.name.lower():
            clashes[embedding.name] = seen[tokens]
        seen.setdefault(tokens, embedding.name)
    return clashes


def manifest_fields(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's record of embeddings fused at export (its ``export`` section)."""
    return {"embeddings": records} if records else {}


def notes_of(records: list[dict[str, Any]]) -> list[str]:
    if not records:
        return []
    return ["textual inversion embeddings fused into the text encoders (a prompt uses each by its word): "
            + ", ".join(f"{r['name']} ({vectors_text(r['vectors'])})" for r in records)]


def vectors_text(count: int) -> str:
    return f"{count} vector{'s' * (count != 1)}"
