"""Our denoising loop must not drift from Diffusers' own StableDiffusionPipeline.

Same checkpoint, same initial latents, same scheduler and steps: the decoded
image must agree within 1e-5 (fp32) and so must the final latents.
"""

import numpy as np
import pytest
import torch

from sdopt import GenerateRequest
from sdopt.runtime.noise import Noise
from sdopt.runtime.schedulers import make_scheduler

from conftest import SMALL

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _our_float_image(pipeline, latents):
    scaling = pipeline.manifest.model["vae_scaling_factor"]
    decoded = pipeline.components["vae_decoder"](latent_sample=latents / scaling)["sample"]
    return np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("scheduler, guidance", [("ddim", 7.5), ("euler", 7.5), ("euler_a", 7.5), ("dpmpp_2m", 7.5), ("pndm", 7.5), ("lms", 7.5),
                                                  ("lcm", 1.5), ("lcm", 1.0)])  # lcm: an LCM-LoRA's guidance (1.0: no unconditional pass)
def test_image_matches_diffusers_pipeline(tiny_pipeline, diffusers_pipe, scheduler, guidance):
    request = GenerateRequest(**{**SMALL, "guidance_scale": guidance}, scheduler=scheduler, negative_prompt="blurry, low quality", num_images=2)
    ours = tiny_pipeline.generate(request)

    diffusers_pipe.scheduler = make_scheduler(scheduler, dict(diffusers_pipe.scheduler.config))
    # Diffusers draws its latents from the generator exactly as we do (CPU, float32), and hands the
    # same generator to ancestral schedulers: passing a fresh generator reproduces our noise stream.
    common = dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        height=request.height,
        width=request.width,
        num_images_per_prompt=request.num_images,
    )
    ref_latents = diffusers_pipe(**common, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    ref_image = diffusers_pipe(**common, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np").images

    latent_err = float(np.abs(ours.latents - ref_latents.numpy()).max())
    image_err = float(np.abs(_our_float_image(tiny_pipeline, ours.latents) - ref_image).max())
    print(f"{scheduler}: max abs latent diff {latent_err:.2e}, image diff {image_err:.2e}")
    assert latent_err <= TOLERANCE
    assert image_err <= TOLERANCE
    # The PNG-ready pixels are the same rounding of the same floats.
    ours_u8 = np.stack([np.asarray(im) for im in ours.images])
    assert np.abs(ours_u8.astype(int) - (ref_image * 255).round().astype(int)).max() <= 1


def test_explicit_latents_path_matches(tiny_pipeline, diffusers_pipe):
    """The issue's form of the check: Diffusers given our initial latents explicitly."""
    request = GenerateRequest(**{**SMALL, "scheduler": "euler"})
    ours = tiny_pipeline.generate(request)
    factor = tiny_pipeline.manifest.model["vae_scale_factor"]
    latents = Noise(request.seed).randn((1, 4, request.height // factor, request.width // factor))  # the loop's first draw
    diffusers_pipe.scheduler = make_scheduler("euler", dict(diffusers_pipe.scheduler.config))
    ref = diffusers_pipe(
        prompt=request.prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        height=request.height,
        width=request.width,
        latents=latents,
        output_type="np",
    ).images
    assert float(np.abs(_our_float_image(tiny_pipeline, ours.latents) - ref).max()) <= TOLERANCE


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_v_prediction_with_zero_terminal_snr_matches_diffusers(shapes_model, scheduler):
    """The shapes model predicts velocity on a zero-terminal-SNR schedule (as SD 2.x's v-models do)."""
    from diffusers import StableDiffusionPipeline

    import sdopt

    pipe = StableDiffusionPipeline.from_pretrained(shapes_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    request = GenerateRequest(prompt="a red circle on the left and a blue square on the right", seed=3, steps=6, height=64, width=64,
                              guidance_scale=3.0, scheduler=scheduler)
    ours = sdopt.load(shapes_model).generate(request)
    ref = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale, height=64, width=64,
               generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    err = float(np.abs(ours.latents - ref.numpy()).max())
    print(f"shapes model, {scheduler}: max abs latent diff {err:.2e}")
    assert err <= TOLERANCE

