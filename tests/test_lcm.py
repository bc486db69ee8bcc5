"""Latent consistency models: an LCM-distilled UNet takes the guidance scale as an input (timestep_cond) and
samples with LCMScheduler in a few steps. Held to Diffusers' LatentConsistencyModelPipeline, and exported."""

import numpy as np
import pytest
import torch

import sdopt
from sdopt import GenerateRequest

from conftest import SMALL

TOLERANCE = 1e-5  # as tests/test_parity_diffusers.py


@pytest.fixture(scope="module")
def tiny_lcm(tmp_path_factory):
    from sdopt.zoo import write_model

    return write_model("tiny-lcm", tmp_path_factory.mktemp("zoo") / "tiny-lcm", seed=0, progress=False)


def _on_turbos_scheduler(model, folder):
    """A copy of ``model`` on SD-Turbo's scheduler (Euler ancestral, trailing timesteps), as its checkpoint ships."""
    import json
    import shutil

    shutil.copytree(model, folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config.update({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"})
    config.pop("skip_prk_steps", None)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"]}))
    return folder


@pytest.mark.parametrize("guidance", [8.5, 2.0])
def test_a_latent_consistency_model_matches_diffusers(tiny_lcm, guidance):
    """An LCM-distilled UNet (guidance embedded: timestep_cond) under LCMScheduler, against Diffusers'
    LatentConsistencyModelPipeline: one UNet pass per step whatever the guidance scale, and a negative
    prompt, which such a model cannot use, is said to be unused rather than silently dropped."""
    import warnings

    from diffusers import LatentConsistencyModelPipeline

    request = GenerateRequest(**{**SMALL, "guidance_scale": guidance}, num_images=2)
    with sdopt.load(tiny_lcm) as pipe:
        ours = pipe.generate(request)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.generate(GenerateRequest(**{**SMALL, "steps": 1}, negative_prompt="blurry"))
    assert pipe.manifest.model["time_cond_proj_dim"] == 256 and ours.request.guidance_scale == guidance
    assert len(ours.timings.unet_steps) == request.steps and ours.timings.unguided_steps == 0
    assert any("negative prompt is not used" in str(w.message) for w in caught)

    theirs = LatentConsistencyModelPipeline.from_pretrained(tiny_lcm, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    common = dict(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=guidance, height=request.height,
                  width=request.width, num_images_per_prompt=request.num_images)
    ref_latents = theirs(**common, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    ref_image = theirs(**common, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np").images
    latent_err = float(np.abs(ours.latents - ref_latents.numpy()).max())
    print(f"LCM, guidance {guidance}: max abs latent diff {latent_err:.2e}")
    assert latent_err <= TOLERANCE
    assert np.abs(np.stack([np.asarray(im) for im in ours.images]).astype(int) - (ref_image * 255).round().astype(int)).max() <= 1


def test_only_an_lcm_says_the_negative_prompt_is_unused(tiny_pipeline):
    """An ordinary UNet uses the negative prompt: nothing is said of it (every request with one was told otherwise)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "steps": 1}, negative_prompt="blurry"))
    assert not any("embeds guidance" in str(w.message) for w in caught) and not any("embeds guidance" in n for n in result.warnings)


@pytest.mark.slow
def test_exports_of_a_latent_consistency_model_agree_with_torch(tiny_lcm, tmp_path):
    """ONNX (dynamic) and OpenVINO (static, batch 1: the UNet's batch is not doubled, since it runs unguided) take
    timestep_cond; their latents follow torch's."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from sdopt.export.run import export

    request = GenerateRequest(**{**SMALL, "guidance_scale": 8.5})
    with sdopt.load(tiny_lcm) as pipe:
        reference = pipe.generate(request).latents
    scale = float(np.abs(reference).max())
    for target, options in (("onnx", {}), ("openvino", {"height": 64, "width": 64, "batch": 1})):
        manifest = export(tiny_lcm, target, tmp_path / target, **options)
        assert "timestep_cond" in [i["name"] for i in manifest.components["unet"].inputs]
        with sdopt.load(tmp_path / target) as pipe:
            latents = pipe.generate(request).latents
            other = pipe.generate(GenerateRequest(**{**SMALL, "guidance_scale": 2.0})).latents
        error = float(np.abs(latents - reference).max()) / scale
        print(f"LCM {target} vs torch: max abs latent diff {error:.1e} of the latents' scale")
        assert error < 1e-5
        assert float(np.abs(other - latents).max()) > 1e-3 * scale  # the guidance scale reaches the graph


def test_the_shapes_an_lcm_unet_is_built_for_are_unguided(tiny_lcm):
    """A static OpenVINO artifact and TensorRT's profiles size the UNet for the images alone, not twice them."""
    from sdopt.export.spec import ShapeProfile, family_specs
    from sdopt.manifest import read_manifest
    from sdopt.tensorrt.profiles import profiles_for

    manifest = read_manifest(tiny_lcm)
    specs = family_specs(manifest.pipeline_family, {"text_encoder": 2}, manifest.model)
    assert specs["unet"].input_names[-1] == "timestep_cond"
    profiles = profiles_for(specs, manifest.model, ShapeProfile(batch=(1, 2, 4), height=(64,) * 3, width=(64,) * 3))
    assert [p[0] for p in (profiles["unet"]["sample"].min, profiles["unet"]["sample"].opt, profiles["unet"]["sample"].max)] == [1, 2, 4]
    assert profiles["unet"]["timestep_cond"].opt == (2, 256)


def test_step_feature_caching_carries_the_guidance_embedding(tiny_lcm, tmp_path):
    """The split UNet is Diffusers' bit for bit with timestep_cond, the shallow branch reads it too, and a cached
    ONNX export follows torch's caching."""
    pytest.importorskip("onnxruntime")
    from sdopt.export.run import export
    from sdopt.runtime.embedded_guidance import scale_embedding
    from sdopt.runtime.torch import load_pretrained
    from sdopt.stepcache.unet import split

    unet = load_pretrained("unet", tiny_lcm / "unet")
    deep, shallow = split(unet)
    g = torch.Generator().manual_seed(0)
    sample, hidden = torch.randn(2, 4, 9, 7, generator=g), torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    cond, other = (torch.from_numpy(scale_embedding(scale, 256, 2)) for scale in (8.5, 2.0))
    t = torch.tensor(981.0)
    with torch.inference_mode():
        expected = unet(sample, t, encoder_hidden_states=hidden, timestep_cond=cond).sample
        out = deep(sample, t, encoder_hidden_states=hidden, timestep_cond=cond)
        assert torch.equal(out.sample, expected)
        assert torch.equal(shallow(sample, t, hidden, out.deep_feature, timestep_cond=cond), expected)
        assert not torch.equal(shallow(sample, t, hidden, out.deep_feature, timestep_cond=other), expected)

    request = GenerateRequest(**{**SMALL, "guidance_scale": 8.5, "steps": 5}, cache_interval=2)
    with sdopt.load(tiny_lcm, deep_cache=True) as pipe:
        reference = pipe.generate(request)
    assert reference.timings.shallow_steps == 2
    export(tiny_lcm, "onnx", tmp_path / "onnx", deep_cache=2)
    with sdopt.load(tmp_path / "onnx") as pipe:
        cached = pipe.generate(request)
    error = float(np.abs(cached.latents - reference.latents).max()) / float(np.abs(reference.latents).max())
    print(f"LCM with step-feature caching, ONNX vs torch: {error:.1e} of the latents' scale")
    assert cached.timings.shallow_steps == 2 and error < 1e-5


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img_on_a_latent_consistency_model_matches_diffusers(tiny_lcm, strength):
    """LCMScheduler takes the strength itself (every step, spread below it), as LatentConsistencyModelImg2ImgPipeline does."""
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline

    from init_images import contiguous, picture

    request = GenerateRequest(**{**SMALL, "guidance_scale": 8.5}, init_image=picture(), strength=strength)
    with sdopt.load(tiny_lcm) as pipe:
        ours = pipe.generate(request)
    assert len(ours.timings.unet_steps) == request.steps  # not int(steps x strength): LCM's schedule
    base = LatentConsistencyModelPipeline.from_pretrained(tiny_lcm, safety_checker=None, requires_safety_checker=False)
    theirs = LatentConsistencyModelImg2ImgPipeline(**base.components)
    theirs.set_progress_bar_config(disable=True)
    ref = theirs(prompt=request.prompt, image=contiguous(picture()), num_inference_steps=request.steps, guidance_scale=8.5,
                 strength=strength, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    error = float(np.abs(ours.latents - ref.numpy()).max())
    print(f"LCM img2img, strength {strength}: max abs latent diff {error:.2e}")
    assert error <= TOLERANCE


def test_a_consistency_sampler_runs_every_step_below_a_low_strength(tiny_lcm, tiny_pipeline):
    """int(steps x strength) is the share an ordinary sampler keeps, not LCM's or TCD's: 4 steps at strength 0.2 run 4 steps
    (Diffusers' LatentConsistencyModelImg2ImgPipeline too), where they were refused as running none. Euler's is still refused,
    the checkpoint's own sampler (PNDM on tiny) at load's check, before any work."""
    from sdopt.errors import SdoptError

    from init_images import picture

    request = GenerateRequest(**{**SMALL, "guidance_scale": 8.5}, init_image=picture(), strength=0.2)
    with sdopt.load(tiny_lcm) as pipe:
        assert len(pipe.generate(request).timings.unet_steps) == 4
    tcd = tiny_pipeline.generate(GenerateRequest(**{**SMALL, "guidance_scale": 1.0}, init_image=picture(), strength=0.2, scheduler="tcd"))
    assert len(tcd.timings.unet_steps) == 4
    for scheduler in ("euler", None):
        with pytest.raises(SdoptError, match=r"strength=0\.2 with steps=4 runs no step"):
            tiny_pipeline.generate(GenerateRequest(**SMALL, init_image=picture(), strength=0.2, scheduler=scheduler))


def test_a_strength_that_leaves_a_consistency_sampler_no_step_is_refused_naming_strength(tiny_pipeline):
    """int(50 x 0.01) = 0: the refusal said "at most 0 steps ... ask for 0 or fewer", a steps count no request can give."""
    from sdopt.errors import SdoptError

    from init_images import picture

    with pytest.raises(SdoptError, match=r"strength=0\.01 leaves LCMScheduler no step .* raise strength to 0\.02 or more") as refused:
        tiny_pipeline.generate(GenerateRequest(**SMALL, init_image=picture(), strength=0.01, scheduler="lcm"))
    assert refused.value.field == "strength"


def test_an_sdxl_lcm_unet_matches_diffusers_sdxl_pipeline(tmp_path):
    """lcm-sdxl's layout: an LCM UNet in StableDiffusionXLPipeline, which (as sdopt) embeds the guidance scale and
    runs no unconditional pass when the UNet has time_cond_proj_dim."""
    from diffusers import StableDiffusionXLPipeline

    from sdopt.zoo import write_model

    folder = write_model("sdxl-tiny-lcm", tmp_path / "sdxl-tiny-lcm", seed=0, progress=False)
    request = GenerateRequest(**{**SMALL, "guidance_scale": 8.0})
    with sdopt.load(folder) as pipe:
        ours = pipe.generate(request)
    assert len(ours.timings.unet_steps) == request.steps
    theirs = StableDiffusionXLPipeline.from_pretrained(folder)
    theirs.set_progress_bar_config(disable=True)
    ref = theirs(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=8.0, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    error = float(np.abs(ours.latents - ref.numpy()).max())
    print(f"SDXL LCM: max abs latent diff {error:.2e}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("steps", [1, 2])
def test_a_turbo_checkpoint_needs_nothing_more(tiny_model, tmp_path, steps):
    """SD-Turbo's recipe — its own scheduler config (Euler ancestral, trailing timesteps), guidance 0, 1-4 steps — is what
    the loop already reads: Diffusers' StableDiffusionPipeline on the same folder, bit for bit."""
    from diffusers import StableDiffusionPipeline

    folder = _on_turbos_scheduler(tiny_model, tmp_path / "turbo")
    (folder / "sdopt.json").unlink(missing_ok=True)  # a Diffusers folder again: read as it is now
    request = GenerateRequest(**{**SMALL, "guidance_scale": 0.0, "steps": steps}, num_images=2)
    with sdopt.load(folder) as pipe:
        ours = pipe.generate(request)
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    ref = theirs(prompt=request.prompt, num_inference_steps=steps, guidance_scale=0.0, height=64, width=64, num_images_per_prompt=2,
                 generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    assert type(theirs.scheduler).__name__ == "EulerAncestralDiscreteScheduler" and len(ours.timings.unet_steps) == steps
    assert float(np.abs(ours.latents - ref.numpy()).max()) <= TOLERANCE


@pytest.mark.parametrize("scheduler,fields,most", [("lcm", {"steps": 60}, 50), ("tcd", {"steps": 51}, 50),
                                                   ("lcm", {"steps": 30, "strength": 0.5, "init_image": "pic"}, 25)])
def test_more_steps_than_a_consistency_sampler_has_are_refused_naming_steps(tiny_pipeline, tmp_path, capsys, scheduler, fields, most):
    """LCM and TCD pick their steps from the 50 the model was distilled on (below strength for img2img): asking more
    was Diffusers' ValueError from set_timesteps, a traceback from `sdopt generate` and the Python API alike."""
    from PIL import Image

    from sdopt.cli import main
    from sdopt.errors import SdoptError

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    fields = {k: image if v == "pic" else v for k, v in fields.items()}
    with pytest.raises(SdoptError, match=rf"steps={fields['steps']}: .* at most {most} steps") as refused:
        tiny_pipeline.generate(GenerateRequest(prompt="a", scheduler=scheduler, height=64, width=64, **fields))
    assert refused.value.field == "steps"
    argv = ["generate", str(tiny_pipeline.folder), "-p", "a", "--scheduler", scheduler, "--steps", str(fields["steps"]), "-o", str(tmp_path / "x.png")]
    if "init_image" in fields:
        image.save(tmp_path / "init.png")
        argv += ["--init-image", str(tmp_path / "init.png"), "--strength", str(fields["strength"])]
    assert main(argv) == 2
    assert f"at most {most} steps" in capsys.readouterr().err


def test_the_bench_runs_a_few_step_model_as_its_own_defaults_say(tiny_lcm, tiny_model, tmp_path, monkeypatch, capsys):
    """sdopt bench and optimize gave every model BENCH_DEFAULTS' Euler at 7.5: an LCM benched with a sampler and guidance
    nobody runs it with. What the user and the profile leave unset is now the reference's own, as sdopt generate runs it
    (4 steps at 8.5 with its LCMScheduler; a Turbo artifact's recorded 1 step unguided), and said; an ordinary checkpoint
    benches as before (the committed baselines' requests). Stopped before any worker runs."""
    import json
    import sys

    import sdopt.bench.optimize  # noqa: F401 (the module, for monkeypatch)
    from sdopt.bench import runner
    from sdopt.bench.profiles import HardwareProfile
    from sdopt.bench.artifacts import model_defaults
    from sdopt.bench.settings import BenchSettings
    from sdopt.cli import main
    from sdopt.errors import SdoptError

    asked = []

    def stop(*args, **kwargs):
        asked.append(next(a for a in (*args, *kwargs.values()) if isinstance(a, BenchSettings)))
        raise SdoptError("stopped before the bench")

    monkeypatch.setattr(runner, "run_bench", stop)
    monkeypatch.setattr(sys.modules["sdopt.bench.optimize"], "optimize", stop)
    assert main(["bench", str(tiny_lcm), "--reference", str(tiny_lcm), "-o", str(tmp_path / "b")]) == 2
    assert "benching at the model's own: 4 steps at guidance 8.5, its LCM scheduler (an LCM-distilled UNet" in capsys.readouterr().err
    assert main(["optimize", str(tiny_lcm), "--guidance", "2", "-o", str(tmp_path / "o")]) == 2  # given: kept
    assert "benching at the model's own: 4 steps, its LCM scheduler (" in capsys.readouterr().err
    assert [(s.steps, s.guidance_scale, s.scheduler) for s in asked] == [(4, 8.5, "lcm"), (4, 2.0, "lcm")]

    said = []
    profile = HardwareProfile(name="p", description="", device="cpu", precisions=[], backends=[], bench={"scheduler": "ddim"})
    settings = BenchSettings.resolve(profile, model_defaults(str(tiny_lcm)), said.append)  # the profile's scheduler stands
    own_size = "benching at the model's own size, 64x64 (below the bench's default 256x256; --height/--width to change)"
    assert (settings.scheduler, settings.guidance_scale) == ("ddim", 8.5) and said[0] == own_size
    assert said[1].startswith("benching at the model's own: ") and "its LCM" not in said[1]
    plain = BenchSettings.resolve(None, model_defaults(str(tiny_model)), said.append)  # scripts/ci_bench.sh's reference: as before
    assert (plain.steps, plain.guidance_scale, plain.scheduler) == (4, 7.5, "euler") and said[2:] == [own_size]

    turbo = _on_turbos_scheduler(tiny_model, tmp_path / "turbo")  # what export --default-steps 1 --default-guidance 0 records
    manifest = json.loads((turbo / "sdopt.json").read_text())
    (turbo / "sdopt.json").write_text(json.dumps({**manifest, "export": {"request_defaults": {"steps": 1, "guidance_scale": 0.0}}}))
    settings = BenchSettings.resolve(None, model_defaults(str(turbo)))
    assert (settings.steps, settings.guidance_scale, settings.scheduler) == (1, 0.0, "euler_a")
