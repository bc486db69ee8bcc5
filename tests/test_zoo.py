"""The synthetic model zoo: deterministic, loadable, atomic, and the real SD 1.5 shapes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdopt.errors import SdoptError
from sdopt.zoo import MODELS, write_model
from sdopt.zoo import writer as zoo_writer

SD15_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
# SDXL base 1.0's published parameter counts (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_PARAMS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    """The session's tiny model (conftest, seed 0): the same-seed test below also shows no test changed it."""
    return tiny_model


def test_models_table_lists_tiny_and_sd15():
    assert {"tiny", "sd15"} <= set(MODELS)
    assert all(model.name == key and model.description for key, model in MODELS.items())


def test_listing_the_zoo_does_not_import_torch():
    code = "import sys, sdopt.zoo; print(sorted(sdopt.zoo.MODELS)); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_same_seed_gives_identical_files_and_leaves_caller_rng_alone(tiny, tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = write_model("tiny", tmp_path / "again", seed=0, progress=False)
    assert torch.equal(torch.rand(3), expected_next)
    assert _digests(again) == _digests(tiny)


def test_different_seed_changes_weights_only(tiny, tmp_path):
    # An existing empty folder is an acceptable target.
    (tmp_path / "other").mkdir()
    other = write_model("tiny", tmp_path / "other", seed=1, progress=False)
    a, b = _digests(tiny), _digests(other)
    assert a.keys() == b.keys()
    changed = {name for name in a if a[name] != b[name]}
    # The weights change, and so does sdopt.json, which records the seed and the weights' sha256.
    assert changed == {name for name in a if name.endswith(".safetensors")} | {"sdopt.json"}
    assert len(changed) == 4  # unet, vae, text_encoder, sdopt.json


def test_folder_layout_is_standard_sd_with_safetensors_only(tiny):
    index = json.loads((tiny / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    files = {p.suffix for p in tiny.rglob("*") if p.is_file()}
    assert not files & {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
    # safetensors writes 0600; the zoo gives weights the same mode as its other files.
    modes = {p.stat().st_mode & 0o777 for p in tiny.rglob("*") if p.is_file()}
    assert len(modes) == 1


def test_pipeline_loads_and_generates_finite_images(tiny):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8
    images = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()


def test_tokenizer_is_clip_shaped_and_agrees_with_text_encoder(tiny):
    from transformers import CLIPTextConfig, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    ids = tokenizer(
        "A photorealistic portrait of an astronaut, 8k", padding="max_length", max_length=77, truncation=True
    ).input_ids
    assert len(ids) == 77 and tokenizer.model_max_length == 77
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.pad_token_id == tokenizer.eos_token_id
    # Words of the built-in corpus are single tokens.
    assert tokenizer.tokenize("astronaut") == ["astronaut</w>"]
    # CLIP's layout: the two special tokens are the last ids.
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (len(tokenizer) - 2, len(tokenizer) - 1)
    assert (tiny / "tokenizer" / "merges.txt").read_text().splitlines()[0] == "#version: 0.2"

    config = CLIPTextConfig.from_pretrained(tiny / "text_encoder")
    assert config.vocab_size >= len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_vae(folder, model, seed):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(zoo_writer, "_write_vae", broken_vae)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_model("tiny", tmp_path / "model", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_non_empty_target_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(SdoptError, match="already exists: choose another output path"):
        write_model("tiny", tmp_path / "model", progress=False)
    assert os.listdir(tmp_path / "model") == ["keep.txt"]


def test_unknown_model_name_lists_known_ones(tmp_path):
    with pytest.raises(SdoptError, match="tiny.*sd15"):
        write_model("sd99", tmp_path / "model")


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_architecture_has_the_real_parameter_counts(name):
    """sd15 and sdxl are SD 1.5's and SDXL base 1.0's architectures: their published parameter counts."""
    # On the meta device: shapes only, no memory and no initialisation cost.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model = MODELS[name]
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel(**model.unet),
            "vae": AutoencoderKL(**model.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**model.text_encoder)),
        }
        if model.text_encoder_2 is not None:
            models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**model.text_encoder_2))
    counts = {component: sum(p.numel() for p in m.parameters()) for component, m in models.items()}
    assert counts == {"sd15": SD15_PARAMS, "sdxl": SDXL_PARAMS}[name]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SDOPT_SLOW") != "1", reason="writes 4 GB; set SDOPT_SLOW=1")
def test_sd15_writes_a_full_checkpoint(tmp_path):
    from safetensors import safe_open

    out = write_model("sd15", tmp_path / "sd15", progress=False)
    try:
        for component, expected in SD15_PARAMS.items():
            (weights,) = (out / component).glob("*.safetensors")
            with safe_open(weights, framework="pt") as f:  # reads headers only
                count = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
            assert count == expected, component
    finally:
        shutil.rmtree(out)  # pytest keeps recent tmp folders; 4 GB is too much to keep


def test_text_encoder_weights_use_canonical_names(tiny):
    """transformers 4 (and so Optimum's exporter) loads CLIP weights only under "text_model." names."""
    from safetensors import safe_open

    with safe_open(tiny / "text_encoder" / "model.safetensors", "np") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys)



def test_a_seed_for_the_shipped_shapes_model_is_refused(tmp_path):
    """init-model shapes --seed 5 copied the shipped weights (the seed changes nothing) and recorded seed 5, which
    inspect showed as 'zoo model shapes (seed 5)'."""
    with pytest.raises(SdoptError, match=r"no seed changes: .*sdopt train-shapes OUT --seed 5"):
        write_model("shapes", tmp_path / "s", seed=5, progress=False)
    assert not (tmp_path / "s").exists()
