"""The Family type: what a pipeline family declares (sdopt.families lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sdopt.errors import SdoptError

# (outputs of each text encoder for the texts [prompts..., negatives...], request, model facts) -> UNet inputs
Conditioning = Callable[[list[dict[str, Any]], Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    name: str  # the manifest's "family"
    title: str  # for people: "Stable Diffusion XL"
    pipeline_classes: frozenset[str]  # model_index.json _class_name values of its folders (Diffusers', Optimum's)
    text_encoders: tuple[str, ...]  # component names, in the order prompts are encoded
    tokenizers: tuple[str, ...]  # the tokenizer folder of each text encoder, same order
    conditioning: Conditioning
    lora_loader: str  # the Diffusers loader mixin (diffusers.loaders.lora_pipeline) that reads this family's LoRA files
    inpaint_pipeline: str  # Diffusers' inpainting pipeline of this family, which errors name as the peer of its 9-channel UNets
    # UNet inputs past sample/timestep/encoder_hidden_states: name -> the model fact giving its width.
    unet_extras: tuple[tuple[str, str], ...] = ()
    # What the text encoders give past their last hidden state and pooled output: "hidden_states", every layer's
    # (hidden_states.0..N, Optimum's names: SDXL reads the penultimate); "clip_skip", clip_skip.2..N, the layer
    # AUTOMATIC1111's Clip skip K reads (the last but K - 1) through the final layer norm (SD 1.x/2.x).
    text_outputs: str = "clip_skip"
    # Under fp16 its VAE runs in float32 when the VAE's config says force_upcast, as Diffusers' pipelines of
    # this family do: SDXL's VAE overflows fp16's range and decodes NaN or black. SD 1.x pipelines never upcast
    # (Manifest.component_precision decides, for every backend).
    upcasts_vae: bool = False
    # What this family's loop does not do yet, each with the reason the refusal gives.
    unsupported: tuple[tuple[str, str], ...] = ()

    @property
    def reads_clip_skip(self) -> bool:
        """Whether a request's Clip skip changes what conditions the UNet. SDXL reads fixed layers of its encoders,
        and AUTOMATIC1111 ignores Clip skip there too (its PNGs still write it): ignored with a warning."""
        return self.text_outputs == "clip_skip"

    @property
    def components(self) -> tuple[str, ...]:
        """Every component a generating artifact of this family has (vae_encoder only for img2img)."""
        return (*self.text_encoders, "unet", "vae_decoder")

    def refuse(self, feature: str, what: str) -> None:
        """A clear error when ``feature`` (img2img, deep_cache, ...) is one this family does not support."""
        reason = dict(self.unsupported).get(feature)
        if reason is not None:
            raise SdoptError(f"{what} is not supported for {self.title} models yet: {reason}")
