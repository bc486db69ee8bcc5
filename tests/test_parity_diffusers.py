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
    # Decoded as the pipeline's output_type="np" decodes (its VAE, then its image processor): one denoising run, not two.
    with torch.no_grad():
        decoded = diffusers_pipe.vae.decode(ref_latents / diffusers_pipe.vae.config.scaling_factor, return_dict=False)[0]
    ref_image = diffusers_pipe.image_processor.postprocess(decoded, output_type="np")

    latent_err = float(np.abs(ours.latents - ref_latents.numpy()).max())
    image_err = float(np.abs(_our_float_image(tiny_pipeline, ours.latents) - ref_image).max())
    print(f"{scheduler}: max abs latent diff {latent_err:.2e}, image diff {image_err:.2e}")
    assert latent_err <= TOLERANCE
    assert image_err <= TOLERANCE
    # The PNG-ready pixels are the same rounding of the same floats.
    ours_u8 = np.stack([np.asarray(im) for im in ours.images])
    assert np.abs(ours_u8.astype(int) - (ref_image * 255).round().astype(int)).max() <= 1


@pytest.mark.parametrize("scheduler, guidance, eta", [("ddim", 7.5, 0.5), ("tcd", 1.0, 0.3), ("tcd", 7.5, 1.0), ("tcd", 1.0, None)])
def test_eta_runs_as_diffusers_eta_argument(tiny_pipeline, diffusers_pipe, scheduler, guidance, eta):
    """DDIM's eta and TCD's gamma (the request's eta; Diffusers' pipelines take it as `eta`, default 0): the same
    latents, and a non-zero eta changes them (so neither side ignored it)."""
    request = GenerateRequest(**{**SMALL, "guidance_scale": guidance}, scheduler=scheduler, eta=eta, num_images=2)
    ours = tiny_pipeline.generate(request)
    diffusers_pipe.scheduler = make_scheduler(scheduler, dict(diffusers_pipe.scheduler.config))
    ref = diffusers_pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=guidance, height=64, width=64,
                         num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent",
                         **({} if eta is None else {"eta": eta})).images
    assert float(np.abs(ours.latents - ref.numpy()).max()) <= TOLERANCE
    assert not [w for w in ours.warnings if "eta" in w]
    if eta:
        deterministic = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "guidance_scale": guidance}, scheduler=scheduler, eta=0.0, num_images=2))
        assert float(np.abs(ours.latents - deterministic.latents).max()) > 0.01


def test_an_eta_no_scheduler_reads_is_said_to_be_unused(tiny_pipeline):
    result = tiny_pipeline.generate(GenerateRequest(**SMALL, scheduler="euler", eta=0.3))
    assert [w for w in result.warnings if "eta" in w] == [
        "eta=0.3 is not used: only DDIM and TCD add noise by eta, and this request runs EulerDiscreteScheduler: ask for ddim or tcd (scheduler)"]
    assert np.array_equal(result.latents, tiny_pipeline.generate(GenerateRequest(**SMALL, scheduler="euler")).latents)


def test_the_default_scheduler_is_the_class_model_index_names(tiny_model, tmp_path):
    """A folder whose model_index.json names another scheduler class than scheduler_config.json's _class_name: Diffusers
    builds model_index's class from that config, and so does sdopt (it took the config's)."""
    import json
    import shutil

    from diffusers import StableDiffusionPipeline

    import sdopt

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "DDIMScheduler"]}))
    (folder / "sdopt.json").unlink(missing_ok=True)  # a Diffusers folder again: read as it is now
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    request = GenerateRequest(**SMALL)
    with sdopt.load(folder) as pipe:
        ours = pipe.generate(request)
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    assert type(theirs.scheduler).__name__ == "DDIMScheduler"
    ref = theirs(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    assert float(np.abs(ours.latents - ref.numpy()).max()) <= TOLERANCE


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

