"""The tiny decoder: distilled against a model's own decoder, exported in the full one's place, run by every backend.

OpenVINO (with step caching as well) is exercised in test_stepcache.py; ONNX here, built by a bench profile.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sdopt.cli import main
from sdopt.errors import SdoptError

from conftest import DISTILL_FEW


def test_tiny_config_is_taesd_layout_at_factor_8_and_follows_the_vae_factor():
    from sdopt.decoder.tiny import tiny_config, upsampling_factor

    sd = tiny_config({"vae_scale_factor": 8, "latent_channels": 4})
    assert sd["num_decoder_blocks"] == [3, 3, 3, 1] and sd["num_encoder_blocks"] == [1, 3, 3, 3]
    assert sd["decoder_block_out_channels"] == [64] * 4 and upsampling_factor(sd) == 8
    shapes = tiny_config({"vae_scale_factor": 4, "latent_channels": 4}, channels=16)
    assert shapes["num_decoder_blocks"] == [3, 3, 1] and upsampling_factor(shapes) == 4
    with pytest.raises(SdoptError, match="power of two"):
        tiny_config({"vae_scale_factor": 6, "latent_channels": 4})


def test_distill_writes_a_diffusers_tiny_decoder_with_its_measurements(distilled):
    from diffusers import AutoencoderTiny

    report = json.loads((distilled / "distill.json").read_text())
    assert report["held_out"]["latents"] == 1 and np.isfinite(report["held_out"]["psnr_db"])
    assert report["probe"]["images"] == 8 and np.isfinite(report["probe"]["psnr_db"])
    # The default width (min(64, the full decoder's narrowest stage)) keeps it cheaper than the full decoder.
    assert 0 < report["flops"]["tiny"] < report["flops"]["full"]
    assert report["decoder_parameters"] < report["full_decoder_parameters"]
    assert report["source"]["artifact_id"] and report["machine"]["cpu"]
    log = (distilled / "training" / "loss.csv").read_text().splitlines()
    assert log[0] == "stage,step,loss" and len(log) == 1 + DISTILL_FEW["train_steps"]
    assert (distilled / "training" / "loss.png").stat().st_size > 0
    module = AutoencoderTiny.from_pretrained(distilled)
    assert module.config.latent_channels == 4 and "_name_or_path" not in json.loads((distilled / "config.json").read_text())


def test_the_same_seed_distills_the_same_weights(distilled, tiny_model, tmp_path):
    from sdopt.decoder.distill import DistillSettings, distill_decoder
    from sdopt.file_reading import sha256_file

    weights = "diffusion_pytorch_model.safetensors"
    again = distill_decoder(tiny_model, tmp_path / "again", DistillSettings(**DISTILL_FEW), progress=False)
    assert sha256_file(again / weights) == sha256_file(distilled / weights)
    other = distill_decoder(tiny_model, tmp_path / "other", DistillSettings(**{**DISTILL_FEW, "seed": 1}), progress=False)
    assert sha256_file(other / weights) != sha256_file(distilled / weights)


def test_bad_tiny_decoders_are_refused_before_anything_is_written(tiny_model, shapes_model, distilled, tmp_path):
    from sdopt.export.run import export

    out = tmp_path / "out"
    with pytest.raises(SdoptError, match="not a folder"):
        export(tiny_model, "onnx", out, vae_decoder=str(tmp_path / "missing"))
    with pytest.raises(SdoptError, match="holds an AutoencoderKL, not an AutoencoderTiny"):
        export(tiny_model, "onnx", out, vae_decoder=str(tiny_model / "vae"))
    # Made for the tiny model (8x), given to the shapes model (4x): its images would be the wrong size.
    with pytest.raises(SdoptError, match="upsamples latents 8x; this model's VAE does 4x"):
        export(shapes_model, "onnx", out, vae_decoder=str(distilled))
    # Weights that do not load (cut short in a copy) are a one-line error, not Diffusers' traceback.
    damaged = tmp_path / "damaged"
    shutil.copytree(distilled, damaged)
    with open(damaged / "diffusion_pytorch_model.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(SdoptError, match="cannot load the tiny decoder in .*damaged"):
        export(tiny_model, "onnx", out, vae_decoder=str(damaged))
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bench_notes_name_the_levers():
    from sdopt.bench.report import flat_rows, markdown

    report = {
        "request": {"prompts": ["p"], "seeds": [0], "steps": 20, "height": 64, "width": 64, "guidance_scale": 7.5, "scheduler": "euler"},
        "machine": {"cpu": {"model": "x", "isa": ["avx2"]}, "libraries": {}},
        "sdopt_version": "0", "reference": "ref", "created": "now", "settings": {"runs": 1, "warmup": 0},
        "artifacts": [{"name": "ov-tiny", "backend": "openvino", "precision": "fp32", "status": "ok", "cache_interval": 3,
                       "replaced": {"vae_decoder": {"by": "AutoencoderTiny", "parameters": 1234, "quality": {"psnr_db": 31.25}}}}],
    }
    assert flat_rows(report)[0]["replaced"] == "vae_decoder by AutoencoderTiny" and flat_rows(report)[0]["cache_interval"] == 3
    note = "**ov-tiny**: step-feature caching, the whole UNet every 3 steps (13 of 20 steps shallow; its UNet step is the mean over both kinds), vae_decoder by AutoencoderTiny, 1,234 parameters (31.2 dB"
    assert note in markdown(report)


@pytest.mark.slow
def test_a_profile_distills_a_decoder_and_exports_it_with_caching_to_onnx(tiny_model, tmp_path, capsys):
    """bench --build-from: the decoder distilled once into WORK/tiny-decoder, the ONNX export takes it and
    caches steps; the images are the tiny decoder's of the cached latents, and the report names both levers."""
    pytest.importorskip("onnxruntime")
    import torch

    import sdopt
    from sdopt import GenerateRequest
    from sdopt.quality import psnr_db
    from sdopt.decoder.tiny import load_tiny_decoder
    from sdopt.runtime.pipeline import to_images

    profile = tmp_path / "levers.toml"
    distill = ", ".join(f"{k} = {v}" for k, v in DISTILL_FEW.items() if k not in ("height", "width"))
    profile.write_text(
        'name = "levers"\ndescription = "test"\ndevice = "cpu"\nprecisions = ["fp32"]\nbackends = ["torch", "onnxruntime"]\n'
        '[bench]\nsteps = 3\nheight = 64\nwidth = 64\nwarmup = 0\nruns = 1\nseeds = [0]\nscheduler = "euler"\n'
        '[[artifacts]]\nname = "torch-fp32"\nreference = true\n'
        f'[[artifacts]]\nname = "onnx-tiny-cache2"\nexport = "onnx"\nvae_decoder = "distilled"\noptions = {{ deep_cache = 2 }}\ndistill = {{ {distill} }}\n'
    )
    work = tmp_path / "work"
    assert main(["bench", "--profile", str(profile), "--build-from", str(tiny_model), "--work", str(work), "-q", "-o", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    decoder = work / "tiny-decoder"
    assert json.loads((decoder / "distill.json").read_text())["settings"]["train_steps"] == DISTILL_FEW["train_steps"]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["name"] == "onnx-tiny-cache2")
    assert row["status"] == "ok" and row["cache_interval"] == 2 and row["replaced"]["vae_decoder"]["by"] == "AutoencoderTiny"
    assert row["stage_compute"]["vae_decoder"]["flops"] < report["artifacts"][0]["stage_compute"]["vae_decoder"]["flops"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "step-feature caching, the whole UNet every 2 steps (1 of 3 steps shallow;" in md and "vae_decoder by AutoencoderTiny" in md
    assert "cache_interval" in (tmp_path / "r" / "results.csv").read_text().splitlines()[0]

    artifact = work / "onnx-tiny-cache2"
    manifest = json.loads((artifact / "sdopt.json").read_text())
    record = manifest["components"]["vae_decoder"]["replaced"]
    assert record["input_scale"] == pytest.approx(manifest["model"]["vae_scaling_factor"]) and np.isfinite(record["quality"]["psnr_db"])
    assert "replaced" not in manifest["components"]["unet"]
    assert json.loads((artifact / "model_index.json").read_text())["vae_decoder"] == ["diffusers", "AutoencoderTiny"]
    assert main(["inspect", str(artifact)]) == 0 and "replaced by AutoencoderTiny" in capsys.readouterr().out

    request = GenerateRequest(prompt="a red circle", seed=3, steps=4, height=64, width=64, scheduler="euler")
    with sdopt.load(artifact) as pipe:
        cached, whole = pipe.generate(request), pipe.generate(GenerateRequest(**{**request.to_dict(), "cache_interval": 1}))
    assert cached.timings.shallow_steps == 2 and whole.timings.shallow_steps == 0
    tiny = load_tiny_decoder(decoder, record["input_scale"])
    with torch.inference_mode():
        expected = tiny.decode(torch.from_numpy(cached.latents / manifest["model"]["vae_scaling_factor"])).sample.numpy()
    assert psnr_db(np.asarray(to_images(expected)[0]), np.asarray(cached.images[0])) > 40  # the graph is the tiny decoder
    with sdopt.load(tiny_model, deep_cache=True) as torch_pipe:
        torch_cached = torch_pipe.generate(GenerateRequest(**{**request.to_dict(), "cache_interval": 2}))
        full = torch_pipe.generate(request)
    np.testing.assert_allclose(cached.latents, torch_cached.latents, atol=2e-3)  # ONNX caches as PyTorch does
    np.testing.assert_allclose(whole.latents, full.latents, atol=2e-3)  # and without caching is the full UNet
    assert psnr_db(np.asarray(full.images[0]), np.asarray(whole.images[0])) < 60  # the decoder did change


@pytest.mark.parametrize("flags, message", [
    (["--channels", "0"], "--channels must be at least 1, got 0"),  # 0 was taken for the default
    (["--height", "0"], "--height 0: must be a multiple of 8"),  # 0 was taken for the model's size
    (["--steps", "0"], "--steps must be at least 1, got 0"),  # it named a --steps-per-image no one can pass
    (["--init", "/nonexistent"], "--init /nonexistent: not a folder"),  # it named --vae-decoder
])
def test_bad_distill_values_are_refused_naming_their_flag(tiny_model, tmp_path, capsys, flags, message):
    assert main(["distill-decoder", str(tiny_model), "-o", str(tmp_path / "d"), "--latents", "4", "-q", *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_bad_distill_values_are_refused_before_torch_is_imported(tiny_model, tmp_path):
    """--channels 0 was refused after importing torch and Diffusers: 13.8 s for a one-line error (2.8 s for export's)."""
    import subprocess
    import sys

    code = ("import sys\nfrom sdopt.cli import main\n"
            f"rc = main(['distill-decoder', {str(tiny_model)!r}, '-o', {str(tmp_path / 'd')!r}, '--channels', '0', '-q'])\n"
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert "--channels must be at least 1" in proc.stderr


def test_a_decoder_distilled_for_another_vae_is_taken_with_a_warning_naming_both_models(tiny_model, distilled, tmp_path, monkeypatch):
    """Its latents' shape fits, so nothing else stopped a decoder distilled for one model being exported into another."""
    from sdopt.decoder import probe
    from sdopt.decoder.tiny import distilled_elsewhere
    from sdopt.export.run import _replace_decoder
    from sdopt.manifest import read_manifest

    manifest = read_manifest(tiny_model)
    assert distilled_elsewhere(distilled, manifest, tiny_model) is None  # its own model (or one sharing its VAE)
    other = tmp_path / "other-decoder"
    shutil.copytree(distilled, other)
    report = json.loads((other / "distill.json").read_text())
    assert len(report["source"]["vae_decoder"]) == 64  # what distill-decoder recorded of the VAE it imitated
    report["source"].update(path="/models/elsewhere", vae_decoder="0" * 64)
    (other / "distill.json").write_text(json.dumps(report))
    monkeypatch.setattr(probe, "measure", lambda full, tiny, model: {"psnr_db": 20.0, "images": 8, "size": "128x128"})  # seconds saved
    with pytest.warns(UserWarning, match=f"distilled for /models/elsewhere \\(another VAE\\), not for {tiny_model}"):
        _replace_decoder(other, tiny_model, manifest)
    del report["source"]["vae_decoder"]  # distilled before distill.json recorded the VAE: the checkpoints are compared
    (other / "distill.json").write_text(json.dumps(report))
    assert distilled_elsewhere(other, manifest, tiny_model) is None  # the same checkpoint
    report["source"]["fingerprint"] = "0" * 64
    (other / "distill.json").write_text(json.dumps(report))
    assert "another checkpoint, whose VAE it does not record" in distilled_elsewhere(other, manifest, tiny_model)
