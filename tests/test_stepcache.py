"""Step-feature caching (DeepCache): the split UNet is exactly the UNet, the loop follows the interval, every backend runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdopt.errors import SdoptError

from conftest import SMALL

REQUEST = dict(SMALL, steps=5, scheduler="euler")


@pytest.fixture(scope="module")
def unet(tiny_model):
    from sdopt.runtime.torch import load_pretrained

    return load_pretrained("unet", tiny_model / "unet")


@pytest.fixture(scope="module")
def sdxl_unet(sdxl_tiny):
    from sdopt.runtime.torch import load_pretrained

    return load_pretrained("unet", sdxl_tiny / "unet")


def _inputs(unet, latent: tuple[int, int], batch: int = 2, seed: int = 0):
    """sample, timestep, encoder_hidden_states, and SDXL's added_cond_kwargs (pooled embedding, size ids)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, *latent, generator=g)
    hidden = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        size = [latent[0] * 8, latent[1] * 8]
        added = {"text_embeds": torch.randn(batch, pooled, generator=g), "time_ids": torch.tensor([[*size, 0, 0, *size]] * batch, dtype=torch.float32)}
    return sample, torch.tensor(981.0), hidden, added


@pytest.mark.parametrize("which", ["unet", "sdxl_unet"])
@pytest.mark.parametrize("latent", [(8, 8), (9, 7)])  # a multiple of the down factor, and not (explicit upsample sizes)
def test_the_split_unet_is_exactly_the_unet(request, which, latent):
    """DeepUNet's output is Diffusers' bit for bit, and the shallow branch fed the feature of the same call gives it
    again: SD 1.x's UNet, and SDXL's (its time embedding adds the pooled text embedding and the size ids)."""
    import torch

    from sdopt.stepcache.unet import split

    unet = request.getfixturevalue(which)
    deep, shallow = split(unet)
    sample, t, hidden, added = _inputs(unet, latent)
    with torch.inference_mode():
        expected = unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        out = deep(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=added)
        again = shallow(sample, t, hidden, out.deep_feature, added_cond_kwargs=added)
    assert torch.equal(out.sample, expected)
    assert out.deep_feature.shape == (2, unet.config.block_out_channels[1], *latent)
    assert torch.equal(again, expected)
    # Another step's inputs with this step's feature: the shallow branch is not the UNet any more.
    sample2, _, _, _ = _inputs(unet, latent, seed=1)
    with torch.inference_mode():
        stale = shallow(sample2, torch.tensor(901.0), hidden, out.deep_feature, added_cond_kwargs=added)
        fresh = unet(sample2, torch.tensor(901.0), encoder_hidden_states=hidden, added_cond_kwargs=added).sample
    assert not torch.allclose(stale, fresh)
    if added is not None:  # the added embeddings reach the shallow branch too
        other = {**added, "text_embeds": added["text_embeds"] + 1}
        with torch.inference_mode():
            assert not torch.equal(shallow(sample, t, hidden, out.deep_feature, added_cond_kwargs=other), expected)


def test_the_shallow_branch_holds_a_fraction_of_the_weights(unet):
    from sdopt.stepcache.unet import ShallowUNet

    shallow = sum(p.numel() for p in ShallowUNet(unet).parameters())
    whole = sum(p.numel() for p in unet.parameters())
    assert 0 < shallow < 0.5 * whole


def test_unsupported_unets_are_refused_with_a_reason():
    from types import SimpleNamespace

    from sdopt.stepcache.unet import check_supported

    kandinsky_like = SimpleNamespace(config={"addition_embed_type": "image"}, down_blocks=[0, 0], up_blocks=[0, 0])
    with pytest.raises(SdoptError, match="addition_embed_type=image.*without --deep-cache"):
        check_supported(kandinsky_like)
    check_supported(SimpleNamespace(config={"addition_embed_type": "text_time"}, down_blocks=[0, 0], up_blocks=[0, 0]))  # SDXL


def test_schedule_runs_every_nth_step_whole():
    from sdopt.stepcache.schedule import runs_whole, shallow_count

    assert [runs_whole(i, 3) for i in range(7)] == [True, False, False, True, False, False, True]
    assert shallow_count(5, 2) == 2 and shallow_count(5, 1) == 0 and shallow_count(20, 3) == 13


@pytest.fixture(scope="module")
def cached_torch(tiny_model):
    import sdopt

    with sdopt.load(tiny_model, deep_cache=True) as pipe:
        yield pipe


def test_torch_pipeline_caches_at_the_asked_interval(cached_torch, tiny_pipeline):
    from sdopt import GenerateRequest

    plain = tiny_pipeline.generate(GenerateRequest(**REQUEST))
    off = cached_torch.generate(GenerateRequest(**REQUEST))  # deep_cache=True: available, not on by default
    assert off.timings.shallow_steps == 0
    np.testing.assert_array_equal(off.latents, plain.latents)
    cached = cached_torch.generate(GenerateRequest(**REQUEST, cache_interval=2))
    assert cached.timings.shallow_steps == 2 and len(cached.timings.unet_steps) == 5
    assert not np.array_equal(cached.latents, plain.latents)
    assert "2 shallow" in cached.summary()


def test_caching_without_the_shallow_branch_says_how_to_get_it(tiny_pipeline):
    from sdopt import GenerateRequest

    # the direct fix first, a Python caller's way: export advice ("--deep-cache N") came first to a torch pipeline
    with pytest.raises(SdoptError, match=r"^cache_interval=2 needs the UNet's shallow branch, which this torch pipeline was loaded "
                                         r"without: load it with deep_cache=True \(step-feature caching; a server: sdopt serve --deep-cache\), or ask for "
                                         r"cache_interval=1$"):
        tiny_pipeline.generate(GenerateRequest(**REQUEST, cache_interval=2))
    with pytest.raises(SdoptError, match="cache_interval=0"):
        GenerateRequest(**REQUEST, cache_interval=0).validate()


def test_generate_loads_a_pytorch_checkpoint_with_the_shallow_branch_for_an_images_cache_interval(tiny_model, tmp_path, monkeypatch):
    """--parameters-from an image made with Cache interval: 2 loaded the PyTorch checkpoint without the branch (only the
    --cache-interval flag asked for it), and the request was refused with advice to export."""
    import sdopt
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from sdopt.cli import main

    info = PngInfo()
    info.add_text("parameters", "a fox\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Cache interval: 2")
    Image.new("RGB", (64, 64)).save(tmp_path / "made.png", pnginfo=info)
    loaded = {}

    def load(path, **options):
        loaded.update(options)
        raise SdoptError("loaded")

    monkeypatch.setattr(sdopt, "load", load)
    assert main(["generate", str(tiny_model), "--parameters-from", str(tmp_path / "made.png"), "-o", str(tmp_path / "out.png")]) == 2
    assert loaded.get("deep_cache") is True


def test_openvino_static_artifact_caches_as_torch_does_and_decodes_with_the_tiny_decoder(tiny_model, distilled, cached_torch, tmp_path):
    """Both levers in one OpenVINO artifact at static shapes (the shallow graph's too); ONNX: test_tiny_decoder.py."""
    pytest.importorskip("openvino")
    import torch

    import sdopt
    from sdopt import GenerateRequest
    from sdopt.quality import psnr_db
    from sdopt.decoder.tiny import load_tiny_decoder
    from sdopt.export.run import export
    from sdopt.runtime.pipeline import to_images

    out = tmp_path / "ov"
    export(tiny_model, "openvino", out, deep_cache=2, vae_decoder=str(distilled), height=64, width=64, batch=1)
    manifest = json.loads((out / "sdopt.json").read_text())
    assert manifest["export"]["deep_cache"] == {"interval": 2}
    from sdopt.inspect_artifact import describe, format_description

    assert "step-feature caching: the whole UNet every 2 steps" in format_description(describe(out, verify=False))
    assert [o["name"] for o in manifest["components"]["unet"]["outputs"]] == ["out_sample", "deep_feature"]
    assert manifest["parity"]["unet_shallow"]["passed"] and manifest["parity"]["unet"]["passed"]
    size = {n: sum(f["size_bytes"] for f in c["files"]) for n, c in manifest["components"].items()}
    assert size["unet_shallow"] < 0.5 * size["unet"]  # only the shallow branch's weights

    with sdopt.load(out) as pipe:
        by_default = pipe.generate(GenerateRequest(**REQUEST))  # the artifact's interval
        off = pipe.generate(GenerateRequest(**REQUEST, cache_interval=1))
    assert by_default.timings.shallow_steps == 2 and off.timings.shallow_steps == 0
    np.testing.assert_allclose(by_default.latents, cached_torch.generate(GenerateRequest(**REQUEST, cache_interval=2)).latents, atol=2e-3)
    np.testing.assert_allclose(off.latents, cached_torch.generate(GenerateRequest(**REQUEST)).latents, atol=2e-3)
    # Truncated guidance on top of a static cached artifact (the unguided batch compiled on first use, the
    # cached feature cut to its conditional rows): tests/test_families.py, on SDXL's static OpenVINO artifact.
    tiny = load_tiny_decoder(distilled, manifest["components"]["vae_decoder"]["replaced"]["input_scale"])
    with torch.inference_mode():
        expected = tiny.decode(torch.from_numpy(off.latents / manifest["model"]["vae_scaling_factor"])).sample.numpy()
    assert psnr_db(np.asarray(to_images(expected)[0]), np.asarray(off.images[0])) > 40

    # Quantized, it stays a cached artifact: both UNet graphs calibrated in int8, the interval kept.
    pytest.importorskip("nncf")
    from sdopt.quant.run import quantize

    q = quantize(out, "int8-static", tmp_path / "ov-int8", backend="nncf", components=["unet"],
                 options={"calibration_prompts": ["a red circle", "a blue square at the top"]})  # two: enough to see both graphs calibrated
    assert q.export["deep_cache"] == {"interval": 2}
    assert {n: (c.quantization or {}).get("scheme") for n, c in q.components.items() if c.quantization} == {
        "unet": "int8-static", "unet_shallow": "int8-static"}
    assert q.components["unet_shallow"].quantization["calibration"]["samples"] > 0
    with sdopt.load(tmp_path / "ov-int8") as pipe:
        assert pipe.generate(GenerateRequest(**REQUEST)).timings.shallow_steps == 2


def test_export_refuses_a_bad_interval(tiny_model, tmp_path):
    from sdopt.cli import main

    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "x"), "--deep-cache", "0"]) == 2
    # Past a request's most (1000): the artifact made images whose "Cache interval: 1001" no request could give again
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "x"), "--deep-cache", "1001"]) == 2
    assert not (tmp_path / "x").exists()
    import sdopt

    with pytest.raises(SdoptError, match="deep_cache=1001"):
        sdopt.load(tiny_model, deep_cache=1001)
