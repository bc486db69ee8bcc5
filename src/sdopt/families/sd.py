"""Stable Diffusion 1.x and 2.x: one CLIP text encoder whose last hidden state conditions the UNet.

SD 2.x is the same pipeline (Diffusers' StableDiffusionPipeline) with an
OpenCLIP text encoder, linear-projection attention and, for the 768-v models,
v-prediction: differences in configs, which the modules and the scheduler read,
not in the loop.
"""

from __future__ import annotations

from typing import Any

from sdopt.families.base import Family


def per_image(array, request, negative=None):
    """Rows the UNet takes: one per image, prompt-major (Diffusers' repeat(1, n, 1).view(...)),
    negatives first when guiding. ``array`` holds the prompts' rows then the negatives';
    ``negative``, when given, replaces the negatives' rows (SDXL's zeros)."""
    import numpy as np

    n = len(request.prompts)
    positive = np.repeat(array[:n], request.num_images, axis=0)
    if not request.uses_guidance:
        return positive
    negative = np.repeat(array[n:], request.num_images, axis=0) if negative is None else negative
    return np.concatenate([negative, positive])


def conditioning(outputs: list[dict[str, Any]], request, model: dict[str, Any]) -> dict[str, Any]:
    # Clip skip K: the text encoder's last layer but K - 1, final-normed (Diffusers' clip_skip=K-1; Pipeline.check_request
    # made sure the encoder gives it).
    layer = "last_hidden_state" if request.clip_skip == 1 else f"clip_skip.{request.clip_skip}"
    return {"encoder_hidden_states": per_image(outputs[0][layer], request)}


FAMILY = Family(
    name="stable-diffusion",
    title="Stable Diffusion 1.x/2.x",
    pipeline_classes=frozenset({"StableDiffusionPipeline", "OnnxStableDiffusionPipeline", "ORTStableDiffusionPipeline", "OVStableDiffusionPipeline",
                                # inpainting checkpoints (a 9-channel UNet) and their exports
                                "StableDiffusionInpaintPipeline", "ORTStableDiffusionInpaintPipeline", "OVStableDiffusionInpaintPipeline",
                                # saved from an img2img pipeline: the same modules as a text-to-image one (qa69). SDXL's
                                # img2img class stays refused: its refiner has no first text encoder.
                                "StableDiffusionImg2ImgPipeline", "ORTStableDiffusionImg2ImgPipeline", "OVStableDiffusionImg2ImgPipeline",
                                # latent consistency models (LCM_Dreamshaper_v7: guidance embedded in the UNet) and their exports
                                "LatentConsistencyModelPipeline", "ORTLatentConsistencyModelPipeline", "OVLatentConsistencyModelPipeline"}),
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    conditioning=conditioning,
    lora_loader="StableDiffusionLoraLoaderMixin",
    inpaint_pipeline="StableDiffusionInpaintPipeline",
)
