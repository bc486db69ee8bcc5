"""A request that does not say runs the model's own steps and guidance (sdopt.runtime.request_defaults): what its
artifact records (export/quantize --default-steps/--default-guidance, for a Turbo model), an LCM UNet's 4 steps at
8.5 (Diffusers' LatentConsistencyModelPipeline's), else sdopt's 20 at 7.5 — in sdopt generate and sdopt serve, and
said where they apply; what a request or a flag says wins."""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.cli import main
from sdopt.runtime.request_defaults import RequestDefaults, record, request_defaults

from serving import running_server

LCM = {"time_cond_proj_dim": 256}


@pytest.fixture(scope="module")
def tiny_lcm(tmp_path_factory):
    from sdopt.zoo import write_model

    return write_model("tiny-lcm", tmp_path_factory.mktemp("zoo") / "tiny-lcm", seed=0, progress=False)


def _pair(defaults: RequestDefaults) -> tuple[int, float]:
    return defaults.steps, defaults.guidance_scale


def test_where_the_defaults_come_from():
    assert _pair(request_defaults({}, None)) == (20, 7.5) and request_defaults({}, {}).is_sdopts
    assert _pair(request_defaults(LCM, None)) == (4, 8.5) and "LCM" in request_defaults(LCM, None).source
    turbo = {"request_defaults": {"steps": 1, "guidance_scale": 0.0}}
    assert _pair(request_defaults({}, turbo)) == (1, 0.0) and "export" in request_defaults({}, turbo).source
    assert _pair(request_defaults(LCM, {"request_defaults": {"steps": 2}})) == (2, 8.5)  # the rest from the model
    assert record(None, None) == {} and record(1, 0) == turbo and record(None, 3) == {"request_defaults": {"guidance_scale": 3.0}}
    # Named as export's and quantize's keyword arguments here; the command line's flags by sdopt export (below).
    for steps, guidance, message in ((0, None, "default_steps=0: must be an integer from 1 to 1000"),
                                     (True, None, "default_steps=True"), (2.5, None, "default_steps=2.5"),
                                     (None, 51, "default_guidance=51: must be a number from 0 to 50"),
                                     (None, math.nan, "default_guidance=nan"), (None, -1.0, "default_guidance=-1.0")):
        with pytest.raises(SdoptError, match=message):
            record(steps, guidance)


def _generate(model, out, *extra) -> str:
    return ["generate", str(model), "-p", "a cross", "--height", "64", "--width", "64", "-o", str(out), *extra]


def test_generate_runs_an_lcm_model_at_its_own_steps_and_guidance(tiny_lcm, tiny_model, tmp_path, capsys):
    """Without --steps/--guidance an LCM runs 4 steps at 8.5 (the same image the Python API makes when asked for
    them) and says so; a flag given keeps its value, the other still comes from the model; sdopt's model says nothing."""
    assert main(_generate(tiny_lcm, tmp_path / "lcm.png")) == 0
    err = capsys.readouterr().err
    assert "4 steps at guidance 8.5: an LCM-distilled UNet" in err and "UNet 4 calls" in err
    with sdopt.load(tiny_lcm) as pipe:
        assert _pair(pipe.request_defaults) == (4, 8.5)
        asked = pipe.generate(GenerateRequest("a cross", steps=4, guidance_scale=8.5, height=64, width=64))
        other = pipe.generate(GenerateRequest("a cross", steps=4, guidance_scale=2.0, height=64, width=64))
    saved = np.asarray(Image.open(tmp_path / "lcm.png"))
    assert np.array_equal(saved, np.asarray(asked.images[0])) and not np.array_equal(saved, np.asarray(other.images[0]))

    assert main(_generate(tiny_lcm, tmp_path / "two.png", "--steps", "2")) == 0
    err = capsys.readouterr().err
    assert "guidance 8.5: an LCM-distilled UNet" in err and "4 steps" not in err and "UNet 2 calls" in err
    assert main(_generate(tiny_lcm, tmp_path / "both.png", "--steps", "2", "--guidance", "3")) == 0
    assert "LCM-distilled" not in capsys.readouterr().err
    assert main(_generate(tiny_model, tmp_path / "plain.png")) == 0
    err = capsys.readouterr().err
    assert "UNet 21 calls" in err and "defaults" not in err and "guidance" not in err  # PNDM: 20 steps in 21 UNet calls


def test_an_artifact_records_its_defaults_at_export_and_keeps_them_through_quantization(tiny_model, tmp_path, capsys):
    """sdopt export --default-steps 1 --default-guidance 0 (SD-Turbo's): in the manifest, in sdopt inspect, in what
    generate runs; sdopt quantize carries the source's and changes only what it is given; bad values refused at once."""
    out = tmp_path / "turbo-onnx"
    assert main(["export", str(tiny_model), "--to", "onnx", "--default-steps", "1", "--default-guidance", "0", "-q", "-o", str(out)]) == 0
    assert "default    request: 1 step at guidance 0 (the artifact's, set when it was made" in capsys.readouterr().out
    assert json.loads((out / "sdopt.json").read_text())["export"]["request_defaults"] == {"steps": 1, "guidance_scale": 0.0}
    assert main(_generate(out, tmp_path / "turbo.png")) == 0
    assert "UNet 1 calls" in capsys.readouterr().err
    with sdopt.load(out) as pipe:
        asked = pipe.generate(GenerateRequest("a cross", steps=1, guidance_scale=0.0, height=64, width=64))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "turbo.png")), np.asarray(asked.images[0]))

    source = tmp_path / "tiny-turbo"  # a checkpoint folder whose manifest records them (the zoo writes one)
    shutil.copytree(tiny_model, source)
    manifest = json.loads((source / "sdopt.json").read_text())
    manifest.setdefault("export", {})["request_defaults"] = {"steps": 1, "guidance_scale": 0.0}
    (source / "sdopt.json").write_text(json.dumps(manifest))
    quantized = tmp_path / "turbo-int8"
    assert main(["quantize", str(source), "--scheme", "int8", "--backend", "quanto", "--default-steps", "2", "-q", "-o", str(quantized)]) == 0
    assert json.loads((quantized / "sdopt.json").read_text())["export"]["request_defaults"] == {"steps": 2, "guidance_scale": 0.0}

    refused = tmp_path / "refused"
    for flags, message in ((["--default-steps", "0"], "--default-steps 0: must be an integer"), (["--default-guidance", "80"], "--default-guidance 80.0")):
        capsys.readouterr()
        assert main(["export", str(tiny_model), "--to", "onnx", *flags, "-o", str(refused)]) == 2
        assert message in capsys.readouterr().err and not refused.exists()
        assert main(["quantize", str(tiny_model), "--scheme", "int8", "--backend", "quanto", *flags, "-o", str(refused)]) == 2
        assert message in capsys.readouterr().err and not refused.exists()


def test_serve_takes_the_models_defaults_unless_started_with_its_own(tiny_lcm):
    """An LCM served without --steps/--guidance: OpenAI requests, native jobs without them and the page get 4 at 8.5
    (the steps no more than --max-steps); with --steps/--guidance, the server's; AUTOMATIC1111's API its own 50 at 7."""
    openai = pytest.importorskip("openai", reason="pip install 'sdopt[serve-test]'")
    import httpx

    with sdopt.load(tiny_lcm) as pipe:
        for settings, expected in (({}, (4, 8.5)), ({"max_steps": 3}, (3, 8.5)), ({"steps": 2, "guidance_scale": 1.5}, (2, 1.5))):
            with running_server(pipe, **settings) as (url, app):
                def last(api):
                    spec = [job for job in app.state.worker.jobs.values() if job.api == api][-1].spec
                    return spec.steps, spec.guidance_scale

                openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).images.generate(prompt="a cross", size="64x64")
                assert last("openai") == expected
                httpx.post(url + "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64}).raise_for_status()
                assert last("native") == expected
                assert f'id="steps" type="number" value="{expected[0]}"' in httpx.get(url + "/").text
        with running_server(pipe) as (url, app):
            assert httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}, timeout=60).status_code == 200
            assert [job.spec.guidance_scale for job in app.state.worker.jobs.values()] == [7.0]


def test_a_python_request_without_a_size_gets_the_models_or_its_init_images(tiny_pipeline, sdxl_tiny):
    """GenerateRequest's height and width default to None: the pipeline fills them as Diffusers does — the size the
    model was trained at (SDXL's own, not 512²: what every Python caller got before), an init image's own size down
    to multiples of 8, init latents' size; one side given keeps it."""
    plain = tiny_pipeline.generate(GenerateRequest(prompt="a fox", steps=2))
    assert plain.images[0].size == (64, 64) and (plain.request.height, plain.request.width) == (64, 64)
    assert "Size: 64x64" in tiny_pipeline.parameters(GenerateRequest(prompt="a fox", steps=2), 0)
    with pytest.raises(SdoptError, match="multiple of 8"):  # no image has these parameters: refused, not described
        tiny_pipeline.parameters(GenerateRequest(prompt="a fox", steps=2, height=60), 0)
    with pytest.raises(SdoptError, match="give 0 to 1"):
        tiny_pipeline.parameters(GenerateRequest(prompt="a fox", steps=2, num_images=2), 2)
    picture = Image.new("RGB", (101, 70), (120, 40, 200))
    with_image = tiny_pipeline.generate(GenerateRequest(prompt="a fox", steps=2, init_image=picture, strength=0.5))
    assert with_image.images[0].size == (96, 64) and not any("resized" in w for w in with_image.warnings)
    assert tiny_pipeline.generate(GenerateRequest(prompt="a fox", steps=2, width=96)).images[0].size == (96, 64)
    from_latents = tiny_pipeline.generate(GenerateRequest(prompt="a fox", steps=2, init_latents=np.zeros((1, 4, 8, 10), np.float32), strength=0.5))
    assert from_latents.images[0].size == (80, 64)
    xl = sdopt.load(sdxl_tiny)
    want = xl.manifest.model["sample_size"] * xl.manifest.model["vae_scale_factor"]
    assert xl.generate(GenerateRequest(prompt="a fox", steps=1)).images[0].size == (want, want)
    GenerateRequest(prompt="a fox").validate()  # None is a valid size before the pipeline fills it
    # 0 is a size asked for, refused; a size an image or latents would make that no request can have names them.
    with pytest.raises(SdoptError, match="height=0"):
        tiny_pipeline.generate(GenerateRequest(prompt="a fox", steps=2, height=0))
    for start, source in (({"init_image": Image.new("RGB", (7, 7))}, r"the init image \(7x7\)"),
                          ({"init_latents": np.zeros((1, 4, 10, 6), np.float32)}, r"init_latents of shape \(1, 4, 10, 6\)")):
        with pytest.raises(SdoptError, match=source + r" makes a \d+x\d+ request.*give height and width"):
            tiny_pipeline.generate(GenerateRequest(prompt="a fox", steps=2, strength=0.5, **start))


def test_a_static_artifact_runs_its_built_size_for_an_init_image_of_another(tiny_model, tmp_path):
    """Built at 128² (the tiny model's own is 64²): a request without a size runs 128², an init image of another size
    resized to it, and so does a request on the artifact loaded with reshape (which lifts the limit)."""
    assert main(["export", str(tiny_model), "--to", "openvino", "--height", "128", "--width", "128", "--batch", "1", "-o", str(tmp_path / "ov"), "-q"]) == 0
    result = sdopt.load(tmp_path / "ov").generate(GenerateRequest(prompt="a fox", steps=2, init_image=Image.new("RGB", (101, 70)), strength=0.5))
    assert result.images[0].size == (128, 128) and any("resized" in w for w in result.warnings)
    reshaped = sdopt.load(tmp_path / "ov", reshape=True)
    assert reshaped.generate(GenerateRequest(prompt="a fox", steps=1)).images[0].size == (128, 128)
    from sdopt.serve.submission import default_size

    assert reshaped.default_size == (128, 128) and default_size(reshaped) == 128  # what a served request without a size gets
    assert reshaped.generate(GenerateRequest(prompt="a fox", steps=1, height=64, width=64)).images[0].size == (64, 64)
