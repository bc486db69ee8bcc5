"""sdopt train-shapes, cut to a few steps: the folder it writes, and the same seed giving the same weights."""

import json

import pytest

from sdopt.cli import main

pytestmark = pytest.mark.slow

FEW = ["--vae-steps", "2", "--unet-steps", "2", "--images", "8", "-q"]


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 2 (16 and 32 by default; the CLI has no flag for them): each step's forward and backward were most of
    a run's time, and nothing below depends on a batch's size. The trainings run on the test process's share of the
    cores (conftest's thread count), not every core beside the other test worker."""
    import functools

    import torch

    from sdopt.shapes import train

    monkeypatch.setattr(train, "TrainSettings", functools.partial(train.TrainSettings, vae_batch=2, unet_batch=2, threads=torch.get_num_threads()))


def _weights(folder):
    from safetensors.torch import load_file

    return {
        name: load_file(folder / name / file)
        for name, file in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"))
    }


def test_training_writes_a_loadable_model_with_its_curves_and_repeats_by_seed(tmp_path, capsys, small_batches):
    import torch

    import sdopt
    from sdopt import GenerateRequest

    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["train-shapes", str(first), *FEW]) == 0
    assert (first / "training" / "loss.png").stat().st_size > 0
    log = (first / "training" / "loss.csv").read_text().splitlines()
    assert log[0] == "stage,step,loss" and len(log) == 1 + 2 + 2
    settings = json.loads((first / "training" / "settings.json").read_text())
    assert settings["settings"]["unet_steps"] == 2 and settings["settings"]["images"] == 8 and settings["seconds"]["total_s"] > 0 and settings["vae_scaling_factor"] > 0
    config = json.loads((first / "vae" / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(settings["vae_scaling_factor"])
    result = sdopt.load(first).generate(GenerateRequest(prompt="a red circle on the left", steps=2, height=64, width=64))
    assert result.images[0].size == (64, 64)

    assert main(["train-shapes", str(second), *FEW]) == 0
    assert main(["train-shapes", str(other), *FEW, "--seed", "1"]) == 0
    a, b, c = _weights(first), _weights(second), _weights(other)
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), f"{name}: the same seed gave other weights"
    assert not all(torch.equal(a["unet"][k], c["unet"][k]) for k in a["unet"])
    assert main(["train-shapes", str(first), *FEW]) == 2  # exists: refused, not overwritten
    assert "exists" in capsys.readouterr().err


def test_a_bad_training_value_is_an_error_naming_its_flag(tmp_path, capsys):
    """It was a ValueError traceback naming the field."""
    assert main(["train-shapes", str(tmp_path / "t"), "-q", "--vae-steps", "0"]) == 2
    assert "--vae-steps must be at least 1, got 0" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_quiet_training_prints_nothing_and_gives_the_thread_count_back(tmp_path, capfd, monkeypatch):
    """-q printed transformers' "Loading weights" bar when the text encoder was read back from the zoo's files. The
    training runs on every core (threads=0) and left torch there for the rest of the process (a Python caller's, a
    test worker's): it gives the caller's count back."""
    import functools

    import torch

    from sdopt.shapes import train

    monkeypatch.setattr(train, "TrainSettings", functools.partial(train.TrainSettings, vae_batch=2, unet_batch=2, threads=2))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train-shapes", str(tmp_path / "m"), "--vae-steps", "1", "--unet-steps", "1", "--images", "1", "-q"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    captured = capfd.readouterr()
    assert captured.err == "" and "Loading weights" not in captured.out
