"""How a pipeline's image was made, as AUTOMATIC1111 writes it into the PNG (sdopt.infotext): the request's values,
the sampler, the model's name and hash, the backend and its quantization, the LoRAs fused into the weights, and
the textual inversion embeddings the prompts read ("TI hashes").
"""

from __future__ import annotations

import functools

from sdopt.errors import SdoptError
from sdopt import infotext
from sdopt.os_text import readable
from sdopt.request import GenerateRequest
from sdopt.runtime import schedulers


class ImageParameters:
    """Pipeline's generation parameters (a part of Pipeline, not used alone): it reads the pipeline's manifest,
    scheduler_config, folder, precision, family, embeddings and vocabularies, and its request defaults (sized,
    cache_interval, guidance_end)."""

    @functools.cached_property
    def default_scheduler_name(self) -> str | None:
        """The sdopt name of the checkpoint's own scheduler (None when no name builds it alike)."""
        return schedulers.name_of(self.scheduler_config)

    @property
    def model_hash(self) -> str | None:
        """AUTOMATIC1111's short "Model hash" for this artifact: its id's first 10 hex digits (it changes with any file);
        None for a folder without sdopt.json, whose files were never hashed."""
        return None if self.manifest.inferred else self.manifest.artifact_id[:10]

    def parameters(self, request: GenerateRequest, index: int) -> str:
        """Image ``index`` of ``request``'s result, as AUTOMATIC1111 writes generation parameters (sdopt.infotext).
        A request no generation could run, or an index past its images, is refused: no text describes that image."""
        from sdopt import __version__

        request = self.sized(request).validate()
        if not isinstance(index, int) or not 0 <= index < request.batch_size:
            raise SdoptError(f"index={index!r}: the request makes {request.batch_size} image{'s' * (request.batch_size != 1)}, "
                             f"give 0 to {request.batch_size - 1}")
        name = request.scheduler or self.default_scheduler_name
        manifest = self.manifest
        return infotext.image_parameters(
            request, index, sampler=schedulers.A1111_SAMPLERS.get(name) if name else None,
            # the folder's name as PNG text must be: under LC_ALL=C a non-ASCII name was undecoded bytes (surrogates)
            # that PIL refused when saving the image, after the generation
            model=readable(self.folder.name) if self.folder is not None else None, model_hash=self.model_hash,
            backend=f"{manifest.backend} {self.precision}" + (f", {quantized}" if (quantized := self.quantization) else ""),
            cache_interval=self.cache_interval(request),
            guidance_end=self.guidance_end(request), version=__version__, clip_skip=request.clip_skip if self.family.reads_clip_skip else 1,
            # what the artifact does unasked: a value that differs from it is written even when it is "off"
            defaults={"cache_interval": self.default_cache_interval, "guidance_end": self.default_guidance_end},
            eta_used=schedulers.takes_eta(schedulers.scheduler_class(request.scheduler, self.scheduler_config)),
            embeddings=self.embeddings_used(request, index), fused_loras=self.fused_loras)

    @property
    def fused_loras(self) -> dict[str, float]:
        """{file name: scale} of the LoRAs fused into this artifact's weights at export or quantization (sdopt.lora); a
        file fused twice (--lora F --lora F:0.3) is in the weights at the sum of its scales."""
        from sdopt.lora import summed_scales

        return summed_scales((r["file"], float(r["scale"])) for r in (self.manifest.export or {}).get("loras") or [])

    def embeddings_used(self, request: GenerateRequest, index: int) -> dict[str, str]:
        """{word: the file's sha256, first 12 digits} of the embeddings image ``index``'s prompt and negative read
        (AUTOMATIC1111's "TI hashes"), in the order they are first read."""
        if not self.embeddings:
            return {}
        row = index // request.num_images
        texts = [request.prompts[row], *([request.negative_prompts[row]] if request.negative_prompt is not None and request.uses_guidance else [])]
        short = {e["name"]: e["sha256"][:12] for e in self.embeddings}
        return {word: short[word] for text in texts for word in self.vocabularies[0].used(text)}

    @functools.cached_property
    def quantization(self) -> str | None:
        """What the artifact's weights were quantized to ("int8 (nncf) weights"), None for none (sdopt.manifest)."""
        from sdopt.manifest import quantization_label

        return quantization_label({name: c.quantization for name, c in self.manifest.components.items()})
