"""Model families (sdopt.families): SDXL and SD 2.x run in the one loop, as Diffusers' own pipelines do.

Parity: same checkpoint, same seed (so the same initial latents), same scheduler
and steps: our final latents and image must agree with Diffusers' within 1e-5,
as SD 1.x's do (test_parity_diffusers.py). Then every exporter's artifact must
agree with the torch backend at the floors SD 1.x artifacts hold.
"""

import numpy as np
import pytest
import torch

import sdopt
from sdopt import GenerateRequest
from sdopt.errors import SdoptError
from sdopt.runtime.schedulers import make_scheduler

from conftest import SMALL
from imaging import psnr
from init_images import diffusers_latents, mask_image, picture

# Relative to the largest latent: SDXL's latents (scaling factor 0.13025) span about 5x SD 1.x's,
# and float32 rounding in the batched text encoders (we encode prompts and negatives in one call,
# Diffusers in two) grows with them. 1e-5 of the scale is what SD 1.x's absolute 1e-5 amounts to.
TOLERANCE = 1e-5


def _diffusers_images(pipe, request, scheduler):
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    common = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                  guidance_scale=request.guidance_scale, height=request.height, width=request.width, num_images_per_prompt=request.num_images)
    latents = pipe(**common, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent").images
    images = pipe(**common, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np").images
    return latents.numpy(), images


def _float_image(pipeline, latents):
    decoded = pipeline.components["vae_decoder"](latent_sample=latents / pipeline.manifest.model["vae_scaling_factor"])["sample"]
    return np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


def _check_parity(ours_pipe, pipe, request, scheduler):
    ours = ours_pipe.generate(request)
    ref_latents, ref_images = _diffusers_images(pipe, request, scheduler)
    latent_err = float(np.abs(ours.latents - ref_latents).max() / max(1.0, np.abs(ref_latents).max()))
    image_err = float(np.abs(_float_image(ours_pipe, ours.latents) - ref_images).max())
    print(f"{scheduler}: latents {latent_err:.2e} of their scale, image {image_err:.2e}")
    assert latent_err <= TOLERANCE and image_err <= TOLERANCE


# --- SDXL --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl_diffusers(sdxl_tiny):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_tiny, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipeline(sdxl_tiny):
    return sdopt.load(sdxl_tiny)


@pytest.mark.parametrize(
    "scheduler, negative, images",
    [("euler", None, 1), ("ddim", "blurry, low quality", 2), ("dpmpp_2m", None, 2), ("euler", "", 1)],
    ids=["euler-zero-negatives", "ddim-negative-prompt", "dpmpp-two-images", "euler-empty-negative-encoded"],
)
def test_sdxl_matches_diffusers(sdxl_pipeline, sdxl_diffusers, scheduler, negative, images):
    """No negative prompt: SDXL base conditions the unguided half on zeros (force_zeros_for_empty_prompt);
    with one, on its encoding. Both, and several images per prompt, as Diffusers lays them out."""
    request = GenerateRequest(**SMALL, scheduler=scheduler, negative_prompt=negative, num_images=images)
    _check_parity(sdxl_pipeline, sdxl_diffusers, request, scheduler)


def test_sdxl_manifest_and_conditioning(sdxl_tiny, sdxl_pipeline):
    manifest = sdxl_pipeline.manifest
    assert manifest.family == "stable-diffusion-xl"
    assert {"text_encoder", "text_encoder_2", "unet", "vae_decoder"} <= set(manifest.components)
    assert manifest.model["text_embeds_dim"] == 32 and manifest.model["time_ids_dim"] == 6
    text = sdxl_pipeline.encode_prompts(GenerateRequest(**SMALL))
    assert text["encoder_hidden_states"].shape == (2, 77, 64)  # both encoders' 32 wide, concatenated
    assert text["text_embeds"].shape == (2, 32)
    assert not text["encoder_hidden_states"][0].any() and text["encoder_hidden_states"][1].any()  # zeros for no negative
    assert sdxl_pipeline.encode_prompts(GenerateRequest(**SMALL, negative_prompt=""))["encoder_hidden_states"][0].any()  # "" is encoded
    assert text["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2


@pytest.fixture(scope="module")
def sdxl_diffusers_img2img(sdxl_diffusers):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    pipes = {"img2img": StableDiffusionXLImg2ImgPipeline(**sdxl_diffusers.components),  # the same modules
             "inpaint": StableDiffusionXLInpaintPipeline(**sdxl_diffusers.components)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.mark.parametrize(
    "scheduler, negative, strength, masked",
    [("euler", "blurry", 0.6, False), ("euler_a", None, 0.6, False), ("ddim", None, 0.8, True), ("euler_a", "blurry", 1.0, True)],
    ids=["img2img-euler-negative", "img2img-euler_a-zero-negatives", "inpaint-ddim", "inpaint-euler_a-strength-1"],
)
def test_sdxl_img2img_and_inpaint_match_diffusers(sdxl_pipeline, sdxl_diffusers_img2img, scheduler, negative, strength, masked):
    """The loop's img2img and inpainting start and blend on SDXL as StableDiffusionXLImg2ImgPipeline and
    StableDiffusionXLInpaintPipeline do (same time ids as text-to-image for a base model), two images per prompt."""
    request = GenerateRequest(**{**SMALL, "steps": 5}, scheduler=scheduler, negative_prompt=negative, init_image=picture(),
                              mask_image=mask_image() if masked else None, strength=strength, num_images=2)
    ours = sdxl_pipeline.generate(request)
    assert len(ours.timings.unet_steps) == int(5 * strength) and ours.timings.vae_encoder > 0
    extra = {"mask_image": request.mask_image, "height": 64, "width": 64} if masked else {}
    ref_latents, ref_images = diffusers_latents(sdxl_diffusers_img2img["inpaint" if masked else "img2img"], request, **extra)
    latent_err = float(np.abs(ours.latents - ref_latents).max() / max(1.0, np.abs(ref_latents).max()))
    pixel_err = int(np.abs(np.stack([np.asarray(im) for im in ours.images]).astype(int) - (ref_images * 255).round().astype(int)).max())
    print(f"{scheduler} strength {strength}{' masked' if masked else ''}: latents {latent_err:.2e} of their scale, pixels {pixel_err}/255")
    assert ours.latents.shape == ref_latents.shape and latent_err <= TOLERANCE and pixel_err <= 1


@pytest.fixture(scope="module")
def sdxl_reference(sdxl_pipeline):
    return sdxl_pipeline.generate(GenerateRequest(**SMALL, scheduler="euler"))


@pytest.fixture(scope="module")
def sdxl_exports(sdxl_tiny, tmp_path_factory):
    """Each target's export of sdxl-tiny, made once for this module."""
    from sdopt.export.run import export

    made = {}

    def get(target):
        if target not in made:
            out = tmp_path_factory.mktemp("sdxl") / target
            made[target] = (out, export(sdxl_tiny, target, out))
        return made[target]

    return get


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_sdxl_exports_agree_with_torch(sdxl_exports, sdxl_reference, sdxl_pipeline, target):
    """Optimum's SDXL layout (text_encoder_2/, a UNet taking text_embeds and time_ids), and the same image."""
    pytest.importorskip({"onnx": "onnxruntime", "openvino": "openvino"}[target])
    out, manifest = sdxl_exports(target)
    assert manifest.family == "stable-diffusion-xl"
    assert (out / "text_encoder_2").is_dir() and (out / "tokenizer_2").is_dir()
    unet_inputs = [t["name"] for t in manifest.components["unet"].inputs]
    assert unet_inputs == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    te2_outputs = [t["name"] for t in manifest.components["text_encoder_2"].outputs]
    assert te2_outputs[:2] == ["text_embeds", "last_hidden_state"] and te2_outputs[-1] == "hidden_states.5"
    assert all(p["passed"] for p in manifest.parity.values())
    img2img = GenerateRequest(**SMALL, scheduler="euler", init_image=picture(), mask_image=mask_image(), strength=0.8)
    with sdopt.load(out) as pipeline:
        result = pipeline.generate(sdxl_reference.request)
        inpainted = pipeline.generate(img2img)  # through the exported VAE encoder
    quality = psnr(sdxl_reference.images[0], result.images[0])
    inpaint_quality = psnr(sdxl_pipeline.generate(img2img).images[0], inpainted.images[0])
    print(f"{target}: {quality:.1f} dB against torch fp32; inpainting {inpaint_quality:.1f} dB")
    assert quality >= 40 and inpaint_quality >= 40


# PSNR floors of the quantized SDXL toy against its fp32 image: measured less 3 dB, rounded down
# (torch 2.13.0, torchao 0.18.0, OpenVINO 2026.4.1, NNCF 3.4.0; torchao on an AMD EPYC with AVX-512 VNNI and BF16).
# nncf int8-static with 7-bit weights everywhere (--overflow-fix enable), so its int8 products fit 16 bits and the
# image is the same on CPUs with and without VNNI: measured 37.7 dB on an AVX2-only EPYC. With NNCF's default
# (first layer only) it measured 39.3 dB with VNNI and 33.4 dB without (saturating sums).
QUANT_FLOOR = {"torchao:int8": 49.0, "nncf:int8-static": 34.0}  # measured 52.8, 37.7


@pytest.mark.parametrize("backend, scheme", [("torchao", "int8"), ("nncf", "int8-static")])
def test_sdxl_quantized_generates_and_agrees(sdxl_tiny, sdxl_exports, sdxl_reference, tmp_path, backend, scheme):
    """Both text encoders are quantized with the UNet ("text_encoder" names every one)."""
    from sdopt.quant.run import quantize

    source = sdxl_tiny
    if backend == "nncf":
        pytest.importorskip("nncf")
        source, _ = sdxl_exports("openvino")
    options = {"overflow_fix": "enable"} if backend == "nncf" else None
    manifest = quantize(source, scheme, tmp_path / "q", backend=backend, components=["unet", "text_encoder"], options=options)
    done = {name for name, c in manifest.components.items() if c.quantization}
    assert done == {"unet", "text_encoder", "text_encoder_2"}
    assert manifest.family == "stable-diffusion-xl"
    with sdopt.load(tmp_path / "q") as pipeline:
        result = pipeline.generate(sdxl_reference.request)
    quality = psnr(sdxl_reference.images[0], result.images[0])
    print(f"{backend}:{scheme}: {quality:.1f} dB against torch fp32")
    assert quality >= QUANT_FLOOR[f"{backend}:{scheme}"]


# --- SD 2.x (v-prediction) -----------------------------------------------------------------------
def test_sd2_v_prediction_matches_diffusers(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from sdopt.zoo import write_model

    folder = write_model("sd2-tiny", tmp_path_factory.mktemp("zoo") / "sd2-tiny", progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ours = sdopt.load(folder)
    assert ours.manifest.family == "stable-diffusion"
    from sdopt.inspect_artifact import describe, format_description  # inspect says it: nothing it showed did (qa65)

    assert "scheduler  DDIMScheduler (the model's own), prediction_type=v_prediction" in format_description(describe(folder))
    for scheduler in ("ddim", "euler"):
        _check_parity(ours, pipe, GenerateRequest(**SMALL, scheduler=scheduler, negative_prompt="blurry"), scheduler)


# --- a folder Optimum wrote ------------------------------------------------------------------------
def _optimum_cli():
    """optimum-cli on PATH, or the one SDOPT_OPTIMUM_CLI names (Optimum pins its own transformers:
    it usually lives in its own venv)."""
    import os
    import shutil

    return os.environ.get("SDOPT_OPTIMUM_CLI") or shutil.which("optimum-cli")


@pytest.mark.skipif(not _optimum_cli(), reason="Optimum is not installed (put optimum-cli on PATH or set SDOPT_OPTIMUM_CLI to test an Optimum-written SDXL folder)")
def test_optimum_written_sdxl_openvino_folder_loads(sdxl_tiny, sdxl_reference, tmp_path):
    import os
    import subprocess

    out = tmp_path / "optimum-ov"
    run = subprocess.run([_optimum_cli(), "export", "openvino", "--model", str(sdxl_tiny), "--task", "text-to-image", str(out)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    with sdopt.load(out) as pipeline:
        assert pipeline.manifest.family == "stable-diffusion-xl" and pipeline.manifest.inferred
        result = pipeline.generate(sdxl_reference.request)
    quality = psnr(sdxl_reference.images[0], result.images[0])
    print(f"Optimum-written SDXL OpenVINO folder: {quality:.1f} dB against sdopt's torch backend")
    assert quality >= 40


@pytest.fixture(scope="module")
def sdxl_inpainting(tmp_path_factory):
    """The 9-channel SDXL toy, and Diffusers' StableDiffusionXLInpaintPipeline on it."""
    from diffusers import StableDiffusionXLInpaintPipeline

    from sdopt.zoo import write_model

    folder = write_model("sdxl-tiny-inpaint", tmp_path_factory.mktemp("zoo") / "sdxl-tiny-inpaint", seed=0, progress=False)
    theirs = StableDiffusionXLInpaintPipeline.from_pretrained(folder, add_watermarker=False)
    theirs.set_progress_bar_config(disable=True)
    return folder, theirs


@pytest.mark.parametrize("scheduler, strength", [("euler", 1.0), ("euler_a", 0.6)])
def test_an_sdxl_inpainting_checkpoint_matches_diffusers(sdxl_inpainting, scheduler, strength):
    """A 9-channel SDXL UNet (as stable-diffusion-xl-1.0-inpainting): the mask and the masked image's latents
    every step, as StableDiffusionXLInpaintPipeline does; text-to-image on it is refused."""
    folder, theirs = sdxl_inpainting
    request = GenerateRequest(**{**SMALL, "steps": 5}, scheduler=scheduler, init_image=picture(), mask_image=mask_image(), strength=strength, num_images=2)
    with sdopt.load(folder) as pipeline:
        ours = pipeline.generate(request)
        with pytest.raises(SdoptError, match="inpainting checkpoint"):
            pipeline.generate(GenerateRequest(**SMALL))
    ref_latents, _ = diffusers_latents(theirs, request, mask_image=request.mask_image, height=64, width=64)
    latent_err = float(np.abs(ours.latents - ref_latents).max() / max(1.0, np.abs(ref_latents).max()))
    print(f"SDXL inpainting checkpoint, {scheduler} strength {strength}: latents {latent_err:.2e} of their scale")
    assert latent_err <= TOLERANCE


@pytest.mark.parametrize("family, peer", [("stable-diffusion", "StableDiffusionInpaintPipeline"),
                                          ("stable-diffusion-xl", "StableDiffusionXLInpaintPipeline")])
def test_an_inpainting_checkpoint_without_a_mask_names_its_familys_inpainting_pipeline(family, peer):
    """The refusal of text-to-image on a 9-channel UNet named SD 1.x's StableDiffusionInpaintPipeline for SDXL too."""
    from types import SimpleNamespace

    from sdopt.families import get_family
    from sdopt.runtime.conditioning import check_artifact

    manifest = SimpleNamespace(model={"latent_channels": 4}, pipeline_family=get_family(family), backend="torch")
    with pytest.raises(SdoptError, match=f"as Diffusers' {peer} does"):
        check_artifact(GenerateRequest(**SMALL), manifest, {}, unet_channels=9)


def test_sdxl_vae_stays_fp32_under_fp16_as_diffusers_upcasts_it(sdxl_pipeline, sdxl_exports, tiny_pipeline):
    """SDXL's VAE overflows fp16's range (its config says force_upcast, and Diffusers' SDXL pipelines decode
    in float32): under fp16 every backend runs it in fp32, unless the VAE says it need not (the fp16-fix VAE);
    SD 1.x pipelines never upcast, and bf16 (fp32's range) needs no upcast."""
    import dataclasses
    import warnings

    from sdopt.runtime.torch import load_components

    manifest = sdxl_pipeline.manifest
    assert {n: manifest.component_precision(n, "fp16") for n in manifest.components} == {
        "text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "fp16", "vae_decoder": "fp32", "vae_encoder": "fp32"}
    assert manifest.component_precision("vae_decoder", "bf16") == "bf16"
    assert tiny_pipeline.manifest.component_precision("vae_decoder", "fp16") == "fp16"
    fp16_safe = dataclasses.replace(manifest, model={**manifest.model, "vae_force_upcast": False})
    assert fp16_safe.component_precision("vae_decoder", "fp16") == "fp16"

    # torch (its fp16 runs on CUDA; the dtypes and the overflow are the same on the CPU): latents this large
    # push the decoder's activations past fp16's 65,504, as SDXL's real VAE does inside its up blocks.
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32) * 1e5
    for which, expected, finite in ((manifest, torch.float32, True), (fp16_safe, torch.float16, False)):
        components = load_components(sdxl_pipeline.folder, which, "cpu", "fp16", {})
        assert components["unet"].dtype == torch.float16 and components["vae_decoder"].dtype == expected
        assert components["vae_encoder"].dtype == expected
        assert components["vae_decoder"].runs == {torch.float32: "fp32", torch.float16: "fp16"}[expected]  # the bench's stage ceiling
        assert np.isfinite(components["vae_decoder"](latent_sample=latents)["sample"]).all() == finite

    # OpenVINO (an fp16 artifact's components, compiled from the fp32 export's graphs): the VAE with an f32
    # hint, the rest with the artifact's.
    from sdopt.runtime.openvino import load_components as openvino_components

    out, exported = sdxl_exports("openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this CPU may run f16 as f32 or bf16: said in a warning, not asserted here
        components = openvino_components(out, dataclasses.replace(exported, precision="fp16"), "cpu", "fp16", {})
    hints = {n: c.config["INFERENCE_PRECISION_HINT"] for n, c in components.items()}
    assert hints == {"text_encoder": "f16", "text_encoder_2": "f16", "unet": "f16", "vae_decoder": "f32", "vae_encoder": "f32"}


@pytest.mark.parametrize("key, value", [("latents_mean", [0.1, 0.2, 0.3, 0.4]), ("shift_factor", 0.06)])
def test_a_vae_that_normalises_its_latents_is_refused_not_run_wrong(tiny_model, tmp_path, capsys, key, value):
    """Playground v2.5's and SD3-class VAEs shift or normalise latents, which the loop does not: refused, saying so."""
    import json
    import shutil

    from sdopt.cli import main

    folder = tmp_path / "diffusers"
    shutil.copytree(tiny_model, folder)
    (folder / "sdopt.json").unlink()  # a plain Diffusers folder: its facts are read from the configs
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(SdoptError, match=f"VAE config sets {key}.*not supported yet"):
        sdopt.load(folder)
    assert main(["generate", str(folder), "-p", "x", "--steps", "1", "-o", str(tmp_path / "x.png"), "-q"]) == 2
    assert f"VAE config sets {key}" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_sdxl_fp16_onnx_export_keeps_the_vae_fp32(sdxl_tiny, sdxl_reference, tmp_path):
    import onnx

    from sdopt.export.run import export

    manifest = export(sdxl_tiny, "onnx", tmp_path / "fp16", precision="fp16")
    assert manifest.precision == "fp16" and all(p["passed"] for p in manifest.parity.values())
    assert {n: c.precision for n, c in manifest.components.items()} == {
        "text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "fp16", "vae_decoder": "fp32", "vae_encoder": "fp32"}
    assert manifest.export["fp16"]["vae_decoder"]["kept"] == "fp32"

    def weight_types(name):
        graph = onnx.load(str(tmp_path / "fp16" / name / "model.onnx"), load_external_data=False).graph
        return {onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer if t.dims}

    assert weight_types("unet") == {"FLOAT16"} and weight_types("vae_decoder") == {"FLOAT"}
    with sdopt.load(tmp_path / "fp16") as pipeline:
        result = pipeline.generate(sdxl_reference.request)
    quality = psnr(sdxl_reference.images[0], result.images[0])
    print(f"SDXL ONNX fp16 (VAE fp32) vs torch fp32: {quality:.1f} dB")
    assert np.isfinite(result.latents).all() and quality >= 40


def test_sdxl_caches_step_features_on_torch_and_a_static_openvino_artifact(sdxl_tiny, sdxl_pipeline, tmp_path):
    """Step-feature caching on SDXL: off, the cached torch pipeline is the plain one exactly; the OpenVINO
    artifact's two UNet graphs take SDXL's extra inputs (static shapes, the unguided batch compiled on first
    use) and follow torch's caching, with truncated guidance on top."""
    pytest.importorskip("openvino")
    from sdopt.export.run import export

    request = GenerateRequest(**{**SMALL, "steps": 5}, scheduler="euler")
    with sdopt.load(sdxl_tiny, deep_cache=True) as cached:
        np.testing.assert_array_equal(cached.generate(request).latents, sdxl_pipeline.generate(request).latents)
        expected = {end: cached.generate(GenerateRequest(**{**SMALL, "steps": 5}, scheduler="euler", cache_interval=2, guidance_end=end))
                    for end in (1.0, 0.5)}
    assert expected[1.0].timings.shallow_steps == 2 and not np.array_equal(expected[1.0].latents, expected[0.5].latents)
    manifest = export(sdxl_tiny, "openvino", tmp_path / "ov", deep_cache=2, height=64, width=64, batch=1)
    assert [t["name"] for t in manifest.components["unet_shallow"].inputs] == [
        "sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", "deep_feature"]
    assert manifest.parity["unet_shallow"]["passed"] and manifest.parity["unet"]["passed"]
    with sdopt.load(tmp_path / "ov") as pipeline:
        for end, torch_result in expected.items():
            result = pipeline.generate(GenerateRequest(**{**SMALL, "steps": 5}, scheduler="euler", guidance_end=end))  # its interval: 2
            assert result.timings.shallow_steps == 2 and result.timings.unguided_steps == (2 if end == 0.5 else 0)
            err = float(np.abs(result.latents - torch_result.latents).max() / max(1.0, np.abs(torch_result.latents).max()))
            print(f"SDXL cached every 2, guidance_end {end}: OpenVINO vs torch {err:.1e} of the latents' scale")
            assert err <= 1e-4


def test_sdxl_bench_counts_both_encoders_and_the_conditioned_unet(sdxl_tiny, sdxl_exports, tmp_path):
    """sdopt bench on SDXL artifacts: the rows, quality against the reference, and FLOPs of SDXL's UNet
    (with its pooled embedding and size ids) and of both text encoders."""
    pytest.importorskip("pandas")
    from sdopt.bench.flops import text_encoder_flops, unet_flops_per_call
    from sdopt.bench.runner import run_bench
    from sdopt.bench.settings import BenchSettings

    onnx_out, _ = sdxl_exports("onnx")
    settings = BenchSettings.resolve(None, prompts=["a lighthouse at dawn"], seeds=[0], steps=2, height=64, width=64, warmup=0, runs=1, scheduler="euler")
    report = run_bench([str(onnx_out)], str(sdxl_tiny), tmp_path / "report", settings, progress=False)
    by = {a["name"]: a for a in report["artifacts"]}
    assert all(a["status"] == "ok" for a in by.values()), [a.get("error") for a in by.values()]
    assert by["onnx"]["quality"]["psnr_db"] >= 40
    unet = unet_flops_per_call(sdxl_tiny / "unet" / "config.json", 2, 64, 64, 8)
    assert report["unet_flops_per_call"] == unet > 0
    encoders = [text_encoder_flops(sdxl_tiny / n / "config.json", 2) for n in ("text_encoder", "text_encoder_2")]
    assert all(e > 0 for e in encoders)
    assert by["onnx"]["stage_compute"]["text_encoder"]["flops"] == sum(encoders)
