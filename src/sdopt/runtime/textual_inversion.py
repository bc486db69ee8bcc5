"""Textual inversion embeddings as words prompts use (sdopt.embeddings): the vocabularies prompts are read with,
and add_embeddings, which makes more such words on a loaded pipeline.

The torch backend loads an embedding into its text encoders' token tables at run time; other backends read those
fused at export (sdopt.embeddings.select decides which file is new, fused, or refused).
"""

from __future__ import annotations

import os
from typing import Any


class TextualInversion:
    """Pipeline's embeddings (a part of Pipeline, not used alone): it reads and changes the pipeline's embeddings and
    _vocabularies, under its _adding, _tokenizing and one-call locks."""

    @property
    def vocabularies(self) -> list[Any]:
        """Per tokenizer, the embeddings its text encoder holds, as words a prompt uses (sdopt.embeddings.vocabulary)."""
        if self._vocabularies is None:
            from sdopt.embeddings.vocabulary import Vocabulary

            with self._tokenizing:
                self._vocabularies = [Vocabulary(tokenizer, [(e["name"], e["first_ids"][encoder], e["vectors"]) for e in self.embeddings])
                                      for encoder, tokenizer in zip(self.family.text_encoders, self.tokenizers)]
        return self._vocabularies

    def add_embeddings(self, paths: Any, skip_unfit: bool | None = None) -> dict[str, str]:
        """Make textual inversion embeddings (files, or folders of them) words prompts can use. The torch backend loads
        them into its text encoders; other backends read those fused at export, so a file already fused is accepted
        and another refused. An embedding that cannot be used (made for another model, not fused) is refused, or left
        out as AUTOMATIC1111 skips it: with ``skip_unfit``, or (None) when it was found in a folder given rather than
        named (a file a folder holds that is not an embedding file at all, likewise); returns {word: why} of those left out."""
        from sdopt.embeddings.select import to_load

        self._refuse_closed()
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        widths = None
        if self.token_tables is not None:
            from sdopt.embeddings.tables import widths as table_widths

            widths = table_widths(self.token_tables, self.family.text_encoders)
        # One call at a time from here to the list updated: two at once (two servers' refresh-embeddings) both found a
        # file new, and it was loaded twice.
        with self._adding:
            with self._tokenizing:
                new, skipped = to_load(paths, self.embeddings, self.tokenizer, self.manifest.backend, widths, skip_unfit)
            if new:
                from sdopt.embeddings.tables import extend

                with self._one_call("add_embeddings"):  # not under a running call
                    self._refuse_closed()  # closed since the check above: its tables are gone
                    records = extend(self.token_tables, new, self.family.text_encoders)
                    # Under the tokenizers' lock: vocabularies built meanwhile from the list as it was (a server checking
                    # a prompt) were kept after this reset, and the new words were never read.
                    with self._tokenizing:
                        self.embeddings += records
                        self._vocabularies = None
        return skipped
