"""A tokenizer that reads embeddings' words: a prompt's tokens with each embedding's word replaced by its vectors' ids.

AUTOMATIC1111 does it on token ids, not on text (modules/textual_inversion: EmbeddingDatabase.find_embedding_at_position):
each embedding's name is tokenized once; walking the prompt's tokens, where they start with a name's tokens, the
longest such name wins and its tokens become the embedding's vectors. The vectors' ids are the rows the text encoder's
token table grew by (sdopt.embeddings.tables), so the text encoder reads them as it reads any token.
"""

from __future__ import annotations

from typing import Any, Iterable

FILLER = 1  # `sizes` of a token that is not an embedding's first: the token itself


class Vocabulary:
    """``entries``: (word, first id, vector count) of each embedding this tokenizer's text encoder holds."""

    def __init__(self, tokenizer: Any, entries: Iterable[tuple[str, int, int]] = ()):
        self.tokenizer = tokenizer
        self._starting: dict[int, list[tuple[list[int], list[int]]]] = {}  # a word's first token -> (word's tokens, vector ids)
        self._words: dict[int, str] = {}  # an embedding's first vector id -> its word
        for word, first, count in entries:
            self._words[first] = word
            tokens = tokenizer(word, add_special_tokens=False).input_ids
            if tokens:
                self._starting.setdefault(tokens[0], []).append((tokens, list(range(first, first + count))))
        for options in self._starting.values():
            options.sort(key=lambda option: -len(option[0]))

    def __bool__(self) -> bool:
        return bool(self._starting)

    def tokens(self, text: str) -> tuple[list[int], list[int]]:
        """The text's token ids without BOS/EOS, embeddings' words replaced by their vectors' ids; and for each id the
        size of the embedding that starts there (0 inside one, 1 for a plain token): what keeps one in one chunk."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids if text else []
        if not self._starting:
            return ids, [FILLER] * len(ids)
        out: list[int] = []
        sizes: list[int] = []
        position = 0
        while position < len(ids):
            match = next((option for option in self._starting.get(ids[position], ())
                          if ids[position:position + len(option[0])] == option[0]), None)
            if match is None:
                out.append(ids[position])
                sizes.append(FILLER)
                position += 1
                continue
            word, vectors = match
            out += vectors
            sizes += [len(vectors)] + [0] * (len(vectors) - 1)
            position += len(word)
        return out, sizes

    def input_ids(self, texts: list[str]):
        """Token ids a row per text, as the tokenizer pads and cuts them for the text encoder (BOS, at most
        model_max_length - 2 tokens, EOS, padding), with embeddings' words read."""
        import numpy as np

        length = self.tokenizer.model_max_length
        rows = []
        for text in texts:
            ids = self.tokens(text)[0][: length - 2]
            rows.append([self.tokenizer.bos_token_id, *ids, self.tokenizer.eos_token_id] + [self.tokenizer.pad_token_id] * (length - 2 - len(ids)))
        return np.asarray(rows, dtype=np.int64)

    def used(self, text: str) -> list[str]:
        """The embeddings' words the text uses, in the order it first uses them."""
        ids = self.tokens(text)[0]
        return list(dict.fromkeys(self._words[i] for i in ids if i in self._words))
