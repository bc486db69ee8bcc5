"""Prompt emphasis as AUTOMATIC1111 reads it: ``(word)`` × 1.1, ``((word))`` × 1.21, ``(word:1.5)``, ``[word]`` ÷ 1.1.

A request with ``prompt_emphasis`` on (AUTOMATIC1111's API sets it, as AUTOMATIC1111 always reads prompts so;
``sdopt generate --prompt-emphasis``) has its prompts and negative prompts parsed into runs of text with a weight;
the text encoder reads the text without the syntax, and each token's hidden state is multiplied by its run's weight,
then the row is scaled back to its mean before weighting (AUTOMATIC1111's "Original" emphasis; it scales the
whole batch, sdopt each row, so that a row is the same whatever it is batched with). Pooled outputs (SDXL's
``text_embeds``) are not weighted, as there. ``\\(`` and the like are literal brackets. A prompt without the
syntax encodes exactly as without emphasis (tested).

Not AUTOMATIC1111's: prompts past the text encoder's 77 tokens are cut, not encoded in further chunks, and
``BREAK`` is text.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

ROUND, SQUARE = 1.1, 1 / 1.1  # what one pair of ( ) or [ ] multiplies by
# An escaped bracket or backslash, an opening bracket, ":WEIGHT)" closing a round bracket, a closing bracket, text, a lone colon.
_TOKENS = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")


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
        else:
            runs.append([token, 1.0])
    for start in round_open:
        weigh_from(start, ROUND)
    for start in square_open:
        weigh_from(start, SQUARE)
    merged: list[list[Any]] = []
    for text_run, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text_run
        else:
            merged.append([text_run, weight])
    return [(t, w) for t, w in merged] or [("", 1.0)]


def weighted_ids(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (rows of the tokenizer's max length: BOS, the runs' tokens cut to fit, EOS, padding) and each
    token's weight (1 for the special tokens)."""
    length = tokenizer.model_max_length
    all_ids, all_weights = [], []
    for text in texts:
        ids: list[int] = []
        weights: list[float] = []
        for run, weight in parse(text):
            tokens = tokenizer(run, add_special_tokens=False).input_ids if run else []
            ids += tokens
            weights += [weight] * len(tokens)
        ids, weights = ids[: length - 2], weights[: length - 2]
        pad = length - 2 - len(ids)
        all_ids.append([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad)
        all_weights.append([1.0, *weights, 1.0] + [1.0] * pad)
    return np.asarray(all_ids, dtype=np.int64), np.asarray(all_weights, dtype=np.float32)


def weigh(outputs: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """A text encoder's outputs with every per-token one ([rows, tokens, width]) weighted token by token and each
    row scaled back to its mean; rows whose weights are all 1 and pooled outputs as they were."""
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
            weighted[row] = scaled * (before / scaled.mean())
        out[name] = weighted
    return out
