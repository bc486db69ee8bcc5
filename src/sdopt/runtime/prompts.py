"""The loop's first stage: prompts -> the UNet's conditioning inputs (one row per image, negatives first with
guidance), and what a caller asks of prompts before a call (the warnings of prompts cut, the emphasis chunks a batch
pads to).

Transformers' tokenizers set padding and truncation on their shared backend for each call, so every tokenizer call
here is made under the pipeline's tokenizer lock (Pipeline._tokenizing): a server checking one request while its
worker encodes another's gave the worker rows of several lengths. Prompts read textual inversion words through the
vocabularies (sdopt.runtime.textual_inversion), and AUTOMATIC1111's (word:1.2) and 75-token chunks where the request
asks for emphasis (sdopt.runtime.emphasis).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdopt.request import GenerateRequest
from sdopt.runtime import emphasis


class PromptEncoding:
    """Pipeline's prompt stage (a part of Pipeline, not used alone): it reads the pipeline's family, manifest,
    components, tokenizers, tokenizer, _tokenizing and vocabularies."""

    @staticmethod
    def _tokenize(tokenizer: Any, texts: list[str]) -> np.ndarray:
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="np",
        ).input_ids
        return ids.astype(np.int64)

    def truncated_prompts(self, request: GenerateRequest) -> list[str]:
        """A warning per prompt longer than the text encoder reads (it sees only the first tokens, as in Diffusers)."""
        with self._tokenizing:
            return self._truncated_prompts(request)

    def _truncated_prompts(self, request: GenerateRequest) -> list[str]:
        limit = self.tokenizer.model_max_length
        kinds = {**{n: "negative prompt" for n in request.negative_prompts if n}, **{p: "prompt" for p in request.prompts}}
        out = []
        for text, kind in kinds.items():
            if request.prompt_emphasis:  # read in chunks of 75 tokens where the artifact takes more than 77 (sdopt.runtime.emphasis)
                parts, allowed = emphasis.chunks(self.tokenizer, text, self.vocabularies[0]), self.max_prompt_chunks or emphasis.MAX_CHUNKS
                if len(parts) > allowed:
                    out.append(f"{kind} {text[:40]!r}... needs {len(parts)} chunks of {emphasis.CHUNK} tokens; "
                               + ("this artifact's UNet was built for one (static shapes), so it reads the first" if allowed == 1
                                  else f"sdopt reads the first {allowed}") + ", the rest is ignored")
                continue
            count = len(self.vocabularies[0].tokens(text)[0]) + 2  # with BOS and EOS
            if count > limit:
                out.append(f"{kind} {text[:40]!r}... is {count} tokens; the text encoder reads the first {limit}, the rest is ignored")
        return out

    def prompt_chunks(self, texts: list[str]) -> int:
        """The 75-token chunks the longest of these texts is read in with emphasis (what a call of them pads every row to)."""
        with self._tokenizing:
            return min(max(len(emphasis.chunks(self.tokenizer, t, self.vocabularies[0])) for t in texts), self.max_prompt_chunks or emphasis.MAX_CHUNKS)

    @property
    def max_prompt_chunks(self) -> int | None:
        """How many 77-token chunks of a prompt the UNet takes (emphasis mode): one where it was built for 77 tokens
        (static OpenVINO shapes, TensorRT's profiles), else no limit of its own (None)."""
        return 1 if self.manifest.static_shapes or self.manifest.backend == "tensorrt" else None

    def encode_prompts(self, request: GenerateRequest) -> dict[str, np.ndarray]:
        """The UNet's conditioning inputs, one row per image, [negatives; positives] with guidance:
        encoder_hidden_states, and what else the family's UNet takes (SDXL's text_embeds, time_ids)."""
        texts = request.prompts + (request.negative_prompts if request.uses_guidance else [])
        outputs = []
        for name, tokenizer, vocabulary in zip(self.family.text_encoders, self.tokenizers, self.vocabularies):
            if request.prompt_emphasis:  # AUTOMATIC1111's (word:1.2) and chunks of 75 tokens (sdopt.runtime.emphasis)
                with self._tokenizing:
                    ids, weights = emphasis.weighted_ids(tokenizer, texts, self.max_prompt_chunks, vocabulary)
                outputs.append(emphasis.encode(self.components[name], ids, weights, tokenizer.model_max_length))
            else:  # with embeddings, their words read (sdopt.embeddings.vocabulary); else as Diffusers tokenizes
                with self._tokenizing:
                    ids = vocabulary.input_ids(texts) if vocabulary else self._tokenize(tokenizer, texts)
                outputs.append(self.components[name](input_ids=ids))
        return self.family.conditioning(outputs, request, self.manifest.model)
