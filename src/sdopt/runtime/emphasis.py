"""Prompt emphasis as AUTOMATIC1111 reads it: ``(word)`` × 1.1, ``((word))`` × 1.21, ``(word:1.5)``, ``[word]`` ÷ 1.1.

A request with ``prompt_emphasis`` on (AUTOMATIC1111's API sets it, as AUTOMATIC1111 always reads prompts so;
``sdopt generate --prompt-emphasis``) has its prompts and negative prompts parsed into runs of text with a weight;
the text encoder reads the text without the syntax, and each token's hidden state is multiplied by its run's weight,
then the row is scaled back to its mean before weighting (AUTOMATIC1111's "Original" emphasis; it scales the
whole batch, sdopt each row, so that a row is the same whatever it is batched with). Pooled outputs (SDXL's
``text_embeds``) are not weighted, as there. ``\\(`` and the like are literal brackets. A prompt without the
syntax encodes exactly as without emphasis (tested).

A prompt longer than the text encoder's 77 tokens is encoded as AUTOMATIC1111 encodes it, in chunks of 75 tokens
(each with its own BOS and EOS, broken after a comma near a chunk's end), their hidden states joined along the
tokens; the prompt and its negative get as many chunks (the shorter padded with empty ones). An artifact built for
77 tokens (static OpenVINO shapes, TensorRT profiles) reads the first chunk, cut as Diffusers cuts, with a warning;
beyond MAX_CHUNKS the rest is cut. ``BREAK`` (the word, in capitals) ends a chunk there and starts the next, as in
AUTOMATIC1111 (the spaces around it go with it); inside brackets it still does, where AUTOMATIC1111 would weigh the
marker and read the word as text.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

ROUND, SQUARE = 1.1, 1 / 1.1  # what one pair of ( ) or [ ] multiplies by
CHUNK = 75  # the tokens of one chunk, between its BOS and EOS: the text encoder reads 77
COMMA_BACKTRACK = 20  # AUTOMATIC1111's default: how far back from a full chunk's end its last comma may end it
MAX_CHUNKS = 8  # 600 tokens: far past any prompt written to be read, and a bound on what one request costs
# An escaped bracket or backslash, an opening bracket, ":WEIGHT)" closing a round bracket, a closing bracket, text, a lone colon.
_TOKENS = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
BREAK = ("BREAK", -1.0)  # parse's run for a BREAK (AUTOMATIC1111's marker)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_BREAK_ID = -1  # _tokens' id for a BREAK: no token has it


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:  # "(word:...)": the pattern's digits-and-dots take it; it is text
        return False
    return True


def parse(text: str) -> list[tuple[str, float]]:
    """Runs of text with their weights, neighbours of equal weight merged: "a (red:1.2) fox" ->
    [("a ", 1.0), ("red", 1.2), (" fox", 1.0)]. Brackets left open at the end weigh what follows them."""
    runs: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def weigh_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if tuple(run) != BREAK:
                run[1] *= factor

    for match in _TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):  # an escaped character, itself (a lone backslash: nothing)
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open and _is_number(weight):
            weigh_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            weigh_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            weigh_from(square_open.pop(), SQUARE)
        else:  # text, a BREAK in it a run of its own
            for i, part in enumerate(_BREAK.split(token)):
                runs += [list(BREAK)] if i else []
                runs.append([part, 1.0])
    for start in round_open:
        weigh_from(start, ROUND)
    for start in square_open:
        weigh_from(start, SQUARE)
    merged: list[list[Any]] = []
    for text_run, weight in runs:
        if merged and merged[-1][1] == weight and BREAK not in (tuple(merged[-1]), (text_run, weight)):  # a BREAK stays one
            merged[-1][0] += text_run
        else:
            merged.append([text_run, weight])
    return [(t, w) for t, w in merged] or [("", 1.0)]


# AUTOMATIC1111's square brackets that are not emphasis, innermost first: prompt editing ([from:to:when], [to:when],
# [from::when]; when a number) and alternation ([a|b]). sdopt does neither: parse reads them as [word], the text
# inside weighted ÷1.1, which sdopt_unread says rather than doing it silently.
_SQUARE = re.compile(r"(?<!\\)\[((?:\\.|[^\[\]\\])*)\]")
_WHEN = re.compile(r":\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*$")
_BAR = re.compile(r"(?<!\\)\|")


def unread_syntax(text: str) -> list[str]:
    """AUTOMATIC1111's prompt editing and alternation in ``text``, which sdopt reads as weighted text: each as
    "prompt editing [cat:dog:0.5]", "alternation [cat|dog]"."""
    out = []
    for match in _SQUARE.finditer(text):
        inside = match.group(1)
        if _WHEN.search(inside):
            out.append(f"prompt editing {match.group(0)}")
        elif _BAR.search(inside):
            out.append(f"alternation {match.group(0)}")
    return out


def _tokens(tokenizer: Any, text: str, vocabulary: Any = None) -> tuple[list[int], list[float], list[int]]:
    """The text's tokens without the syntax (no BOS/EOS), each one's weight, and where an embedding's vectors start
    their count (1 for a plain token, 0 inside an embedding: sdopt.embeddings.vocabulary). ``vocabulary``: the
    embeddings this tokenizer's text encoder holds (none: the tokenizer's own tokens)."""
    from sdopt.embeddings.vocabulary import Vocabulary

    vocabulary = vocabulary if vocabulary is not None else Vocabulary(tokenizer)
    ids: list[int] = []
    weights: list[float] = []
    sizes: list[int] = []
    for run, weight in parse(text):
        if (run, weight) == BREAK:
            ids.append(_BREAK_ID)
            weights.append(1.0)
            sizes.append(1)
            continue
        tokens, starts = vocabulary.tokens(run)
        ids += tokens
        weights += [weight] * len(tokens)
        sizes += starts
    return ids, weights, sizes


def chunks(tokenizer: Any, text: str, vocabulary: Any = None) -> list[tuple[list[int], list[float]]]:
    """AUTOMATIC1111's chunks of a prompt: CHUNK tokens each, a chunk that fills up ending after its last comma when
    that is at most COMMA_BACKTRACK tokens from its end (the rest starts the next), an embedding's vectors that would
    not fit in what is left of a chunk starting the next (as there); at least one."""
    ids, weights, sizes = _tokens(tokenizer, text, vocabulary)
    comma = tokenizer(",", add_special_tokens=False).input_ids[-1]
    done: list[tuple[list[int], list[float]]] = []
    chunk_ids: list[int] = []
    chunk_weights: list[float] = []
    last_comma = -1
    for token, weight, size in zip(ids, weights, sizes):
        if token == _BREAK_ID:  # the chunk ends here, however short (an empty one too, as AUTOMATIC1111's)
            done.append((chunk_ids, chunk_weights))
            chunk_ids, chunk_weights, last_comma = [], [], -1
            continue
        if token == comma:
            last_comma = len(chunk_ids)
        elif len(chunk_ids) == CHUNK and last_comma != -1 and len(chunk_ids) - last_comma <= COMMA_BACKTRACK:
            cut = last_comma + 1
            done.append((chunk_ids[:cut], chunk_weights[:cut]))
            chunk_ids, chunk_weights, last_comma = chunk_ids[cut:], chunk_weights[cut:], -1
        if len(chunk_ids) == CHUNK or len(chunk_ids) + size > CHUNK:
            done.append((chunk_ids, chunk_weights))
            chunk_ids, chunk_weights, last_comma = [], [], -1
        chunk_ids.append(token)
        chunk_weights.append(weight)
    if chunk_ids or not done:
        done.append((chunk_ids, chunk_weights))
    return done


def _first_tokens(tokenizer: Any, text: str, most: int, vocabulary: Any = None) -> tuple[list[int], list[float]]:
    """The text's first ``most`` tokens before any BREAK (the one chunk an artifact built for 77 tokens reads)."""
    ids, weights, _ = _tokens(tokenizer, text, vocabulary)
    end = min(ids.index(_BREAK_ID) if _BREAK_ID in ids else len(ids), most)
    return ids[:end], weights[:end]


def weighted_ids(tokenizer: Any, texts: list[str], max_chunks: int | None = 1, vocabulary: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and each token's weight (1 for BOS, EOS and padding), a row per text of as many chunks of the
    tokenizer's length (77: BOS, CHUNK tokens, EOS, padding) as the longest text needs, at most ``max_chunks``
    (None: no limit); a text of fewer chunks is padded with empty ones, as AUTOMATIC1111 pads the shorter of a
    prompt and its negative. With one chunk, a text longer than it is cut, as Diffusers cuts it. ``vocabulary``: the
    embeddings the text encoder holds (sdopt.embeddings.vocabulary)."""
    length = tokenizer.model_max_length
    per_text = [chunks(tokenizer, text, vocabulary) if max_chunks != 1 else [_first_tokens(tokenizer, text, length - 2, vocabulary)] for text in texts]
    count = min(max(len(c) for c in per_text), max_chunks or MAX_CHUNKS)
    all_ids, all_weights = [], []
    for text_chunks in per_text:
        row_ids: list[int] = []
        row_weights: list[float] = []
        for ids, weights in (text_chunks + [([], [])] * count)[:count]:
            pad = length - 2 - len(ids)
            row_ids += [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
            row_weights += [1.0, *weights, 1.0] + [1.0] * pad
        all_ids.append(row_ids)
        all_weights.append(row_weights)
    return np.asarray(all_ids, dtype=np.int64), np.asarray(all_weights, dtype=np.float32)


def encode(encoder: Any, ids: np.ndarray, weights: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """A text encoder's outputs for weighted ids of one or more chunks of ``length`` tokens: each chunk encoded alone
    and weighted (weigh), the per-token outputs of the chunks joined along the tokens, the pooled ones the first
    chunk's (AUTOMATIC1111's SDXL pooled embedding)."""
    parts = [weigh(encoder(input_ids=ids[:, s:s + length]), weights[:, s:s + length]) for s in range(0, ids.shape[1], length)]
    return {name: np.concatenate([p[name] for p in parts], axis=1) if value.ndim == 3 else value for name, value in parts[0].items()}


# Below this |mean| / mean(|value|) the row's mean is rounding noise (a text encoder whose final layer norm has no bias:
# sdopt's random-weight toys), and its ratio to the weighted row's would scale the row by noise — by a different noise on
# each backend. Such a row is weighted and not scaled back. A trained encoder's rows sit far above (its norm's bias).
MEAN_FLOOR = 1e-3


def weigh(outputs: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """A text encoder's outputs with every per-token one ([rows, tokens, width]) weighted token by token and each
    row scaled back to its mean (unless the mean is noise: MEAN_FLOOR); rows whose weights are all 1 and pooled
    outputs as they were."""
    rows = ~np.all(weights == 1.0, axis=1)
    if not rows.any():
        return outputs
    out = dict(outputs)
    for name, value in outputs.items():
        if value.ndim != 3 or value.shape[:2] != weights.shape:
            continue
        weighted = value.copy()
        for row in np.flatnonzero(rows):
            before = value[row].mean()
            scaled = value[row] * weights[row][:, None]
            after = scaled.mean()
            noise = min(abs(before), abs(after)) < MEAN_FLOOR * float(np.abs(scaled).mean())
            weighted[row] = scaled if noise else scaled * (before / after)
        out[name] = weighted
    return out
