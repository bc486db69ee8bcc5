"""Truncated guidance (request.guidance_end): the schedule, Diffusers' own "dynamic CFG" recipe reproduced, the artifact default."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from sdopt import GenerateRequest
from sdopt.errors import SdoptError
from sdopt.runtime.schedulers import make_scheduler

from conftest import SMALL

REQUEST = dict(SMALL, steps=6, scheduler="euler", negative_prompt="blurry")


def test_the_schedule_guides_the_first_fraction_of_the_steps():
    from sdopt.runtime.guidance import guided_steps

    assert [guided_steps(4, e) for e in (0.01, 0.25, 0.4, 0.5, 0.75, 1.0)] == [1, 1, 2, 2, 3, 4]
    assert guided_steps(20, 0.3) == 6 and guided_steps(3, 1.0) == 3


@pytest.mark.parametrize("value", [0, -0.5, 1.5, float("nan"), "half", True])
def test_a_bad_guidance_end_is_refused_with_the_range(value):
    with pytest.raises(SdoptError, match=r"guidance_end=.*\(0, 1\]"):
        GenerateRequest(**REQUEST, guidance_end=value).validate()


@pytest.mark.parametrize("end", [0.5, 0.2])
def test_matches_diffusers_dynamic_guidance_callback(tiny_model, tiny_pipeline, end):
    """Diffusers' documented recipe (a callback that drops the unconditional embeddings and sets the guidance
    scale to 0 after a step) gives the same latents as guidance_end in the one loop."""
    from diffusers import StableDiffusionPipeline

    from sdopt.runtime.guidance import guided_steps

    request = GenerateRequest(**REQUEST, num_images=2, guidance_end=end)
    ours = tiny_pipeline.generate(request)
    k = guided_steps(request.steps, end)
    assert ours.timings.unguided_steps == request.steps - k
    # generate's closing line says which of its calls were the cheaper unguided ones (it said only "6 calls")
    assert f"UNet 6 calls ({request.steps - k} unguided: guidance ended early)" in ours.summary()

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler", dict(pipe.scheduler.config))
    caught = {}

    def dynamic_guidance(p, step, _t, kwargs):
        if step == k - 1:  # after the last guided step
            kwargs["prompt_embeds"] = kwargs["prompt_embeds"].chunk(2)[-1]
            p._guidance_scale = 0.0
        caught["latents"] = kwargs["latents"]
        return kwargs

    pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
         height=request.height, width=request.width, num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(request.seed),
         output_type="latent", callback_on_step_end=dynamic_guidance, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    err = float(np.abs(ours.latents - caught["latents"].numpy()).max())
    print(f"guidance_end {end}: max abs latent diff {err:.2e} (scale {np.abs(ours.latents).max():.2f})")
    assert err <= 1e-5
    full = tiny_pipeline.generate(GenerateRequest(**REQUEST, num_images=2))
    assert np.abs(full.latents - ours.latents).max() > 100 * max(err, 1e-6)  # the lever changed the computation


def test_one_guides_every_step_and_the_artifact_default_applies(tiny_model, tiny_pipeline, tmp_path):
    import sdopt

    plain = tiny_pipeline.generate(GenerateRequest(**REQUEST))
    everything = tiny_pipeline.generate(GenerateRequest(**REQUEST, guidance_end=1.0))
    np.testing.assert_array_equal(plain.latents, everything.latents)
    assert everything.timings.unguided_steps == 0
    half = tiny_pipeline.generate(GenerateRequest(**REQUEST, guidance_end=0.5))

    # An artifact whose manifest says guidance_end 0.5 (what sdopt optimize writes when it chose the lever).
    copy = tmp_path / "tiny-half"
    shutil.copytree(tiny_model, copy)
    manifest = json.loads((copy / "sdopt.json").read_text())  # the zoo writes one
    manifest.setdefault("export", {})["guidance_end"] = 0.5
    (copy / "sdopt.json").write_text(json.dumps(manifest))
    with sdopt.load(copy) as pipe:
        by_default = pipe.generate(GenerateRequest(**REQUEST))
        asked = pipe.generate(GenerateRequest(**REQUEST, guidance_end=1.0))
    np.testing.assert_array_equal(by_default.latents, half.latents)
    np.testing.assert_array_equal(asked.latents, plain.latents)
    assert by_default.timings.unguided_steps == 3
    from sdopt.inspect_artifact import describe, format_description

    assert "truncated guidance: guided for the first 50% of the steps" in format_description(describe(copy))
    assert "truncated guidance" not in format_description(describe(tiny_model))


def test_without_guidance_nothing_is_truncated(tiny_pipeline):
    off = tiny_pipeline.generate(GenerateRequest(**{**REQUEST, "guidance_scale": 1.0}, guidance_end=0.5))
    same = tiny_pipeline.generate(GenerateRequest(**{**REQUEST, "guidance_scale": 1.0}))
    np.testing.assert_array_equal(off.latents, same.latents)
    assert off.timings.unguided_steps == 0


def test_the_bench_takes_it_per_artifact_argument(tmp_path):
    from pathlib import Path

    from sdopt.bench.artifacts import artifact_label, parse_artifact_arg

    assert parse_artifact_arg("models/sd15-ov+guidance-end=0.5") == ("models/sd15-ov", None, {}, {"guidance_end": 0.5})
    path, precision, options, request = parse_artifact_arg("models/sd15@bf16+guidance-end=0.25")
    assert (path, precision, request) == ("models/sd15", "bf16", {"guidance_end": 0.25})
    assert artifact_label(Path(path), precision, options, request) == "sd15@bf16+guidance-end=0.25"
    for bad, says in (("m+guidance-end=2", r"\(0, 1\]"), ("m+guidance-end=half", "not a number")):
        with pytest.raises(SdoptError, match=says):
            parse_artifact_arg(bad)
