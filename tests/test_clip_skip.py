"""AUTOMATIC1111's Clip skip (GenerateRequest.clip_skip): the prompt read from the text encoder's last layer but
N - 1, through its final layer norm — on the prompt and on the negative, as AUTOMATIC1111 reads both (Diffusers'
encode_prompt applies its clip_skip, N - 1, to the prompt only). Exported text encoders give those layers as
``clip_skip.K`` outputs; SDXL ignores it with a warning, as AUTOMATIC1111 does."""

import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image

import sdopt
from sdopt import GenerateRequest
from sdopt.cli import main
from sdopt.errors import SdoptError
from sdopt.infotext import parse_parameters
from sdopt.runtime.schedulers import make_scheduler

from conftest import SMALL
from serving import png, running_server

REQUEST = dict(SMALL, negative_prompt="blurry", scheduler="euler")


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler", dict(pipe.scheduler.config))
    # Diffusers 0.42's clip_skip reads text_encoder.text_model.final_layer_norm; transformers 5's CLIPTextModel has
    # the layer norm one level up. Point the old path at the model (not registered as a submodule) so that
    # Diffusers' own code runs unchanged.
    object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    return pipe


@pytest.mark.parametrize("clip_skip", [2, 5])  # the penultimate, and the first layer of the tiny encoder
def test_clip_skip_is_diffusers_clip_skip_on_prompt_and_negative(tiny_pipeline, diffusers_pipe, clip_skip):
    ours = tiny_pipeline.generate(GenerateRequest(**REQUEST, clip_skip=clip_skip))
    # Diffusers' encode_prompt, clip_skip = N - 1, for the prompt and (through the prompt's path) the negative.
    embeds = [diffusers_pipe.encode_prompt(text, "cpu", 1, False, clip_skip=clip_skip - 1)[0] for text in (REQUEST["prompt"], "blurry")]
    ref = diffusers_pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], num_inference_steps=SMALL["steps"],
                         guidance_scale=SMALL["guidance_scale"], height=64, width=64,
                         generator=torch.Generator("cpu").manual_seed(SMALL["seed"]), output_type="latent").images
    assert float(np.abs(ours.latents - ref.numpy()).max()) <= 1e-5
    plain = tiny_pipeline.generate(GenerateRequest(**REQUEST))
    assert float(np.abs(ours.latents - plain.latents).max()) > 0.1  # it changed the image: not ignored
    assert parse_parameters(ours.images[0].info["parameters"])["Clip skip"] == str(clip_skip)
    assert "Clip skip" not in parse_parameters(plain.images[0].info["parameters"])  # 1 is not written, as AUTOMATIC1111


def test_clip_skip_is_checked(tiny_pipeline):
    assert tiny_pipeline.clip_skip_layers == 5  # the tiny text encoder's layers
    with pytest.raises(SdoptError, match="has 5 layers, so Clip skip goes from 1 to 5"):
        tiny_pipeline.generate(GenerateRequest(**REQUEST, clip_skip=6))
    for bad in (0, 13, "2", 2.0, True):
        with pytest.raises(SdoptError, match="clip_skip=.*must be an integer from 1"):
            GenerateRequest(**REQUEST, clip_skip=bad).validate()
    assert GenerateRequest(**REQUEST, clip_skip=np.int64(2)).validate().clip_skip == 2


def test_exported_text_encoders_give_the_layers(tiny_pipeline, tiny_onnx_artifact, monkeypatch):
    """The ONNX export (OpenVINO's in test_backends_agree) gives clip_skip.2..5: the same image as torch's. An export
    without them (made before, or by Optimum) is refused with the way out."""
    pytest.importorskip("onnxruntime")
    pipe = sdopt.load(tiny_onnx_artifact)
    assert pipe.clip_skip_layers == 5
    request = GenerateRequest(**REQUEST, clip_skip=2)
    ref, ours = tiny_pipeline.generate(request), pipe.generate(request)
    assert float(np.abs(ours.latents - ref.latents).max()) < 1e-3
    encoder = pipe.components["text_encoder"]
    monkeypatch.setattr(encoder, "output_names", ["last_hidden_state", "pooler_output"])
    with pytest.raises(SdoptError, match="gives only its last layer.*export it again"):
        pipe.generate(request)
    pipe.close()


def test_sdxl_ignores_clip_skip_with_a_warning(sdxl_tiny):
    pipe = sdopt.load(sdxl_tiny)
    request = dict(SMALL, steps=2)
    with pytest.warns(UserWarning, match="clip_skip=2 is ignored: Stable Diffusion XL"):
        skipped = pipe.generate(GenerateRequest(**request, clip_skip=2))
    plain = pipe.generate(GenerateRequest(**request))
    assert np.array_equal(skipped.latents, plain.latents)
    assert "Clip skip" not in parse_parameters(skipped.images[0].info["parameters"])  # not what made it
    with running_server(pipe) as (url, _):  # the A1111 API says it did not apply it (the warning is the server's log's)
        r = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 2, "width": 64, "height": 64,
                                                            "override_settings": {"CLIP_stop_at_last_layers": 2}}, timeout=120)
    assert r.status_code == 200 and "override_settings.CLIP_stop_at_last_layers" in json.loads(r.json()["info"])["sdopt_ignored"]


def test_cli_clip_skip_and_its_png_made_again(tiny_model, tmp_path, capsys):
    first, again = tmp_path / "skip.png", tmp_path / "again.png"
    assert main(["generate", str(tiny_model), "-p", "a fox", "--steps", "2", "--clip-skip", "2", "--height", "64", "--width", "64",
                 "-q", "-o", str(first)]) == 0
    assert parse_parameters(Image.open(first).info["parameters"])["Clip skip"] == "2"
    assert main(["generate", str(tiny_model), "--parameters-from", str(first), "-q", "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert main(["generate", str(tiny_model), "-p", "a fox", "--clip-skip", "0", "-o", str(tmp_path / "x.png")]) == 2
    assert "--clip-skip 0: must be an integer from 1" in capsys.readouterr().err
    # The artifact's own limit names the flag typed, as the README says errors do (it said clip_skip=9: walk qa57)
    assert main(["generate", str(tiny_model), "-p", "a fox", "--steps", "1", "--clip-skip", "9", "--height", "64", "--width", "64",
                 "-q", "-o", str(tmp_path / "x.png")]) == 2
    assert "--clip-skip 9: this model's text encoder has 5 layers" in capsys.readouterr().err


def test_a1111_clip_skip_from_override_settings_options_and_infotext(tiny_pipeline):
    body = {"prompt": "a fox", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
    want = np.asarray(tiny_pipeline.generate(GenerateRequest(prompt="a fox", negative_prompt="blurry", steps=2, height=64, width=64,
                                                             seed=3, scheduler="euler", guidance_scale=7.0, prompt_emphasis=True,
                                                             clip_skip=2)).images[0])
    with running_server(tiny_pipeline) as (url, _):
        def txt2img(**extra):
            r = requests.post(f"{url}/sdapi/v1/txt2img", json={**body, **extra}, timeout=60)
            assert r.status_code == 200, r.text
            return np.asarray(png(r.json()["images"][0])), r.json()

        plain, _ = txt2img()
        assert not np.array_equal(plain, want)
        overridden, answer = txt2img(override_settings={"CLIP_stop_at_last_layers": 2, "sd_vae": "x"})
        assert np.array_equal(overridden, want)
        info = answer["info"]
        assert "Clip skip: 2" in info and "override_settings.sd_vae" in info and "override_settings.CLIP" not in info
        assert json.loads(info)["clip_skip"] == 2
        from_text, _ = txt2img(infotext="a fox\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Clip skip: 2")
        assert np.array_equal(from_text, want)
        # POST /options sets it for the requests that do not override it, as AUTOMATIC1111's setting.
        r = requests.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, timeout=10)
        assert r.status_code == 200 and r.json()["sdopt_ignored"] == []
        assert requests.get(f"{url}/sdapi/v1/options", timeout=10).json()["CLIP_stop_at_last_layers"] == 2
        assert np.array_equal(txt2img()[0], want)
        assert np.array_equal(txt2img(override_settings={"CLIP_stop_at_last_layers": 1})[0], plain)
        bad = requests.post(f"{url}/sdapi/v1/txt2img", json={**body, "override_settings": {"CLIP_stop_at_last_layers": 99}}, timeout=10)
        assert bad.status_code == 422 and "CLIP_stop_at_last_layers=99" in bad.text
        assert requests.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "two"}, timeout=10).status_code == 422
        # The native API's and OpenAI's fields.
        r = requests.post(f"{url}/v1/images/generations", json={"prompt": "a fox", "size": "64x64", "sdopt_clip_skip": 9}, timeout=60)
        assert r.status_code == 422 and "sdopt_clip_skip" in r.text
