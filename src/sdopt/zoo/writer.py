"""Write a zoo model as a Diffusers Stable Diffusion folder, atomically.

Imported only when a model is written: it pulls in torch, diffusers and
transformers, which ``import sdopt`` must not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from sdopt.errors import SdoptError
from sdopt.layouts import write_torch_manifest
from sdopt.outputs import atomic_output_dir
from sdopt.zoo.configs import ZooModel
from sdopt.zoo.tokenizer import build_vocab, special_token_ids, write_tokenizer


def component_seed(seed: int, component: str) -> int:
    """One seed per component, so that changing one component's architecture
    (or the order they are written in) leaves the others' weights unchanged."""
    digest = hashlib.sha256(f"sdopt-zoo:{seed}:{component}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch.manual_seed wants < 2**63


@contextlib.contextmanager
def _seeded(seed: int, component: str):
    """Seed the CPU generator for one component, leaving the caller's RNG state as it was.

    Models are then built from their config, so the weights come from the
    architecture's own default initialisation.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(component_seed(seed, component))
        yield


def _write_unet(folder: Path, model: ZooModel, seed: int) -> None:
    from diffusers import UNet2DConditionModel

    with _seeded(seed, "unet"):
        unet = UNet2DConditionModel(**model.unet)
    unet.save_pretrained(folder / "unet")


def _write_vae(folder: Path, model: ZooModel, seed: int) -> None:
    from diffusers import AutoencoderKL

    with _seeded(seed, "vae"):
        vae = AutoencoderKL(**model.vae)
    vae.save_pretrained(folder / "vae")


def _write_text_encoder(folder: Path, model: ZooModel, seed: int, name: str = "text_encoder") -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # Token ids come from the tokenizer: CLIPTextModel pools the hidden state at
    # the EOS id, so a mismatch would silently pool at the wrong position.
    architecture = model.text_encoder_2 if name == "text_encoder_2" else model.text_encoder
    config = {"vocab_size": len(build_vocab()), **architecture, **special_token_ids()}
    if config["vocab_size"] < len(build_vocab()):
        raise ValueError(f"{model.name}: text encoder vocab_size is smaller than the tokenizer's vocabulary")
    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel  # SDXL's second pools through a projection
    with _seeded(seed, name):
        text_encoder = cls(CLIPTextConfig(**config))
    with without_transformers_progress_bar():
        text_encoder.save_pretrained(folder / name)
    canonical_text_encoder_keys(folder / name / "model.safetensors")


def _write_text_encoder_2(folder: Path, model: ZooModel, seed: int) -> None:
    _write_text_encoder(folder, model, seed, "text_encoder_2")


def canonical_text_encoder_keys(path: Path) -> None:
    """Store CLIPTextModel weights under their canonical "text_model." names.

    transformers 5 saves them without that prefix; transformers 4 then finds no
    weight it knows and silently initialises the model at random (so an Optimum
    export of our checkpoint would run another text encoder). Real SD
    checkpoints carry the prefix, and both major versions load it.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    # The projection model's text_projection sits beside text_model, not inside it.
    renamed = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v for k, v in tensors.items()}
    save_file(dict(sorted(renamed.items())), path, metadata={"format": "pt"})


@contextlib.contextmanager
def without_transformers_progress_bar():
    """Hide transformers' one-shard "Writing model shards" bar: our own bar
    reports progress per component, and progress=False must mean silence."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_tokenizer(folder: Path, model: ZooModel, seed: int) -> None:
    write_tokenizer(folder / "tokenizer")
    if model.text_encoder_2 is not None:  # SDXL: one tokenizer per text encoder (the same vocabulary)
        write_tokenizer(folder / "tokenizer_2")


def _write_scheduler(folder: Path, model: ZooModel, seed: int) -> None:
    import diffusers

    # Written as JSON rather than through the scheduler's save_pretrained, which
    # would drop keys its class does not use (clip_sample): a scheduler swapped in
    # with from_config (DDIM defaults to clip_sample=True) must still see them.
    config = {"_class_name": scheduler_class(model), "_diffusers_version": diffusers.__version__, **model.scheduler}
    (folder / "scheduler").mkdir()
    _write_json(folder / "scheduler" / "scheduler_config.json", config)


def scheduler_class(model: ZooModel) -> str:
    return model.scheduler.get("_class_name", "PNDMScheduler")  # SD 1.5's


def _write_model_index(folder: Path, model: ZooModel, seed: int) -> None:
    import diffusers

    index = {
        "_class_name": model.pipeline_class,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", scheduler_class(model)],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if model.text_encoder_2 is None:
        index.update({"feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None]})
    else:  # SDXL base's index: no safety checker; empty negative prompts condition on zeros
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                      "force_zeros_for_empty_prompt": True, "image_encoder": [None, None], "feature_extractor": [None, None]})
    _write_json(folder / "model_index.json", index)


def _write_manifest(folder: Path, model: ZooModel, seed: int) -> None:
    # The sdopt identity of the checkpoint: every file's sha256, so later loads can check them.
    # No creation time in it: the same seed must give byte-identical files.
    write_torch_manifest(folder, source={"zoo": model.name, "seed": seed}, stamp=False)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def trained_weights(model: ZooModel) -> Path:
    """The folder of a trained zoo model's shipped weights (package data)."""
    from importlib import resources

    return Path(str(resources.files("sdopt") / "zoo" / "weights" / str(model.trained)))


def _install_trained(folder: Path, model: ZooModel, seed: int) -> None:
    """The shipped trained components, configs included (training sets some), instead of initial weights."""
    import shutil

    source = trained_weights(model)
    if not (source / "unet").is_dir():
        raise SdoptError(f"the {model.name} model's trained weights are not installed ({source}): train them with `sdopt train-shapes OUT`")
    for component in ("unet", "vae", "text_encoder"):
        shutil.copytree(source / component, folder / component)


def write(model: ZooModel, out: Path, seed: int, progress: bool, force: bool = False, untrained: bool = False) -> Path:
    """Write ``model`` to ``out``; see ``sdopt.zoo.write_model``. ``untrained``: a trained zoo
    model's initial weights (what its training starts from), not the shipped ones."""
    from sdopt.runtime.versions import require_compatible_libraries

    require_compatible_libraries()  # before the output folder: a Diffusers that cannot import its models leaves none
    with atomic_output_dir(out, force=force) as tmp:
        # Looked up by name at call time (not bound earlier), so each writer
        # stays replaceable, e.g. by a test that makes one fail.
        initial = [("text_encoder", _write_text_encoder), ("vae", _write_vae), ("unet", _write_unet)]
        if model.text_encoder_2 is not None:
            initial.insert(1, ("text_encoder_2", _write_text_encoder_2))
        steps = [
            ("tokenizer", _write_tokenizer),
            ("scheduler", _write_scheduler),
            *([("trained weights", _install_trained)] if model.trained and not untrained else initial),
            ("model_index", _write_model_index),
            ("sdopt.json", _write_manifest),
        ]
        with tqdm(steps, desc=f"writing {model.name}", unit="part", disable=not progress) as bar:
            for name, step in bar:
                bar.set_postfix_str(name)  # drawn at once: the bar drew its count just before, with the last part's name
                step(tmp, model, seed)
    return Path(out).absolute()
