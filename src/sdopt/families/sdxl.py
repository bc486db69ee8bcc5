"""Stable Diffusion XL: two CLIP text encoders, a pooled embedding and size conditioning.

As Diffusers' StableDiffusionXLPipeline.encode_prompt does (the parity test
holds the loop to it): each text encoder's penultimate hidden state, the two
concatenated on the feature axis; the second encoder's projected pooled output
as ``text_embeds``; ``time_ids`` = original size + crop top-left + target size
(the request's size, no crop). When no negative prompt is given (None) and the
model says ``force_zeros_for_empty_prompt`` (SDXL base does), the negative rows
are zeros rather than the encoding of ""; a "" given is encoded, as in Diffusers.

img2img and inpainting (a 4-channel UNet) start and blend as SD 1.x's do
(runtime/conditioning.py): Diffusers' StableDiffusionXLImg2ImgPipeline and
StableDiffusionXLInpaintPipeline differ from the SD 1.x ones only where a base
model does not go — aesthetic-score time ids (``requires_aesthetics_score``,
the refiner's) and ``denoising_start``/``denoising_end`` (handing latents
between base and refiner) — so the loop gives them the same conditioning as
text-to-image (tests/test_families.py holds both to Diffusers).

Text encoder graphs give every layer's hidden state under Optimum's names
(``hidden_states.0`` ... ``hidden_states.N``, N the layer count), so an Optimum
SDXL export and ours are read alike: the penultimate is ``N - 1``.
"""

from __future__ import annotations

from typing import Any

from sdopt.families.base import Family
from sdopt.families.sd import per_image

TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


def penultimate(outputs: dict[str, Any]):
    layers = [int(name.split(".")[1]) for name in outputs if name.startswith("hidden_states.")]
    if not layers:
        raise KeyError("the text encoder gives no hidden_states.N outputs (an SDXL text encoder must give every layer's)")
    return outputs[f"hidden_states.{max(layers) - 1}"]


def conditioning(outputs: list[dict[str, Any]], request, model: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    hidden = np.concatenate([penultimate(o) for o in outputs], axis=-1)
    pooled = outputs[-1]["text_embeds"]
    # Diffusers' rule: zeros for no negative prompt at all (None); "" is encoded like any text.
    zeros = request.uses_guidance and model.get("force_zeros_for_empty_prompt", True) and request.negative_prompt is None
    rows = len(request.prompts) * request.num_images
    time_ids = np.array([[request.height, request.width, 0, 0, request.height, request.width]], dtype=np.float32)
    return {
        "encoder_hidden_states": per_image(hidden, request, np.zeros((rows, *hidden.shape[1:]), hidden.dtype) if zeros else None),
        "text_embeds": per_image(pooled, request, np.zeros((rows, pooled.shape[-1]), pooled.dtype) if zeros else None),
        "time_ids": np.repeat(time_ids, rows * (2 if request.uses_guidance else 1), axis=0),
    }


FAMILY = Family(
    name="stable-diffusion-xl",
    title="Stable Diffusion XL",
    pipeline_classes=frozenset({"StableDiffusionXLPipeline", "ORTStableDiffusionXLPipeline", "OVStableDiffusionXLPipeline",
                                # inpainting checkpoints (a 9-channel UNet) and their exports
                                "StableDiffusionXLInpaintPipeline", "ORTStableDiffusionXLInpaintPipeline", "OVStableDiffusionXLInpaintPipeline"}),
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    conditioning=conditioning,
    lora_loader="StableDiffusionXLLoraLoaderMixin",
    inpaint_pipeline="StableDiffusionXLInpaintPipeline",
    unet_extras=(("text_embeds", "text_embeds_dim"), ("time_ids", "time_ids_dim")),
    text_outputs="hidden_states",
    upcasts_vae=True,
)
