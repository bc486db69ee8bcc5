"""Diffusers' AutoencoderTiny (TAESD's architecture) as a model's ``vae_decoder``.

The full decoder's contract is kept: unscaled VAE latents in (what the loop
hands every decoder: ``latents / vae_scaling_factor``), images in [-1, 1] out.
TAESD decodes the latents the UNet produces (scaled ones: its own
``scaling_factor`` is 1), so ``TinyDecoder`` multiplies its input back by the
model's scaling factor. That keeps the loop, every exporter and every backend
unchanged, and lets TAESD's published weights drop in as they are.

A replacement must fit the model it decodes for: the same latent channels and
an upsampling factor equal to the VAE's. ``check_fits`` says which does not.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, with_article
from sdopt.file_reading import read_json, sha256_file
from sdopt.runtime.library_lock import holding_library_lock

ARCHITECTURE = "AutoencoderTiny"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
DEFAULT_CHANNELS = 64  # TAESD's width at every resolution


def tiny_config(model: dict[str, Any], channels: int = DEFAULT_CHANNELS) -> dict[str, Any]:
    """An AutoencoderTiny config for a model: TAESD's layout (at factor 8: blocks 1,3,3,3 down and 3,3,3,1 up),
    with as many 2x stages as the model's VAE has."""
    factor = int(model["vae_scale_factor"])
    stages = int(round(math.log2(factor)))
    if factor < 2 or 2**stages != factor:
        raise SdoptError(f"the model's VAE factor is {factor}: a tiny decoder upsamples in 2x stages, so it needs a power of two")
    if channels < 4:
        raise SdoptError(f"--channels {channels}: give at least 4 (TAESD uses {DEFAULT_CHANNELS})")
    width = [channels] * (stages + 1)
    return {
        "encoder_block_out_channels": width,
        "decoder_block_out_channels": width,
        "num_encoder_blocks": [1] + [3] * stages,
        "num_decoder_blocks": [3] * stages + [1],
        "latent_channels": int(model["latent_channels"]),
    }


def read_config(path: str | Path, flag: str = "--vae-decoder") -> dict[str, Any]:
    """The config of a tiny-decoder folder (Diffusers' AutoencoderTiny layout), checked for what loading needs;
    ``flag``: the option that named it (distill-decoder's --init)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SdoptError(f"{flag} {folder}: not a folder. Give a Diffusers AutoencoderTiny folder (config.json + {WEIGHTS_FILE}), "
                         "such as `sdopt distill-decoder` writes or TAESD's published weights")
    config = read_json(folder / "config.json", what="the tiny decoder's config", missing="give a Diffusers AutoencoderTiny folder")
    if config.get("_class_name") != ARCHITECTURE:
        raise SdoptError(f"{folder} holds {with_article(config.get('_class_name', 'model of unknown class'))}, not an {ARCHITECTURE}: "
                         "give a tiny decoder (`sdopt distill-decoder` writes one)")
    if not (folder / WEIGHTS_FILE).is_file():
        raise SdoptError(f"{folder} has no {WEIGHTS_FILE}: the tiny decoder's weights must be in safetensors")
    return config


def upsampling_factor(config: dict[str, Any]) -> int:
    blocks = config.get("num_decoder_blocks", (3, 3, 3, 1))
    return int(config.get("upsampling_scaling_factor", 2)) ** (len(blocks) - 1)


def check_fits(config: dict[str, Any], model: dict[str, Any], where: str) -> None:
    """A tiny decoder must take the model's latents and give its image size."""
    channels, factor = config.get("latent_channels", 4), upsampling_factor(config)
    if channels != model["latent_channels"]:
        raise SdoptError(f"{where} decodes {channels}-channel latents; this model's have {model['latent_channels']}: "
                         "it was made for another model family. Distill one for this model (`sdopt distill-decoder`)")
    if factor != model["vae_scale_factor"]:
        raise SdoptError(f"{where} upsamples latents {factor}x; this model's VAE does {model['vae_scale_factor']}x, "
                         "so its images would come out the wrong size. Distill one for this model (`sdopt distill-decoder`)")


def input_scale(config: dict[str, Any], model: dict[str, Any]) -> float:
    """What turns the loop's decoder input (latents / the model's scaling factor) into what the tiny decoder reads."""
    return float(model["vae_scaling_factor"]) / float(config.get("scaling_factor", 1.0) or 1.0)


@holding_library_lock  # Diffusers' lazy lookup and from_pretrained (sdopt.runtime.library_lock)
def load_tiny(path: str | Path, dtype=None):
    """The AutoencoderTiny of a folder; weights that do not load (truncated, or not the shapes its config.json
    gives) are an SdoptError naming the folder, not Diffusers' traceback."""
    import torch

    from sdopt.runtime.versions import require_compatible_libraries

    require_compatible_libraries()  # one line, not the ImportError of a Diffusers that cannot import its models
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(Path(path), use_safetensors=True, torch_dtype=dtype or torch.float32)
    except Exception as exc:  # safetensors' and Diffusers' own errors
        text = " ".join(str(exc).split())
        raise SdoptError(f"cannot load the tiny decoder in {path}: {type(exc).__name__}: {text[:300] or 'no message'}"
                         f"{'...' if len(text) > 300 else ''}; its {WEIGHTS_FILE} is damaged or does not match its "
                         "config.json: distill it again (`sdopt distill-decoder`) or copy the folder whole") from None


def load_tiny_decoder(path: str | Path, scale: float, dtype=None):
    """The tiny decoder of a folder, wrapped to the full decoder's contract."""
    return wrap(load_tiny(path, dtype), scale)


def wrap(module, scale: float):
    """``module`` (an AutoencoderTiny) behind the full decoder's ``decode(latents).sample``."""
    import torch
    from diffusers.models.autoencoders.vae import DecoderOutput

    class TinyDecoder(torch.nn.Module):
        def __init__(self, tiny, scale: float):
            super().__init__()
            self.tiny, self.scale = tiny, scale
            self.config = tiny.config

        def decode(self, latent_sample):
            return DecoderOutput(sample=self.tiny.decode(latent_sample * self.scale).sample)

        def enable_tiling(self):
            self.tiny.enable_tiling()

    return TinyDecoder(module, scale).eval()


def vae_identity(manifest, folder: str | Path) -> str | None:
    """The identity of a checkpoint's full VAE decoder (sdopt.manifest.identity_of over its files): what a tiny
    decoder learned to imitate. Two checkpoints may share one VAE (a model and its fine-tunes, tiny and tiny-lcm)."""
    from sdopt.manifest import hash_components, identity_of

    entry = manifest.components.get("vae_decoder")
    if entry is None:
        return None
    hash_components({"vae_decoder": entry}, folder)  # a folder without sdopt.json records no hashes
    return identity_of({"vae_decoder": entry}, folder)


def distilled_elsewhere(path: str | Path, manifest, source: str | Path) -> str | None:
    """A warning when the tiny decoder in ``path`` was distilled (its distill.json) against another VAE than the
    model's in ``source``: it fits the latents' shape, so nothing else stops it, but it imitates the other decoder.
    None when it was distilled for this VAE, or records nothing (TAESD's published weights)."""
    distilled = Path(path) / "distill.json"
    if not distilled.is_file():
        return None
    theirs = read_json(distilled).get("source") or {}
    if theirs.get("vae_decoder"):  # distill.json records the VAE it imitated: compare that (a fine-tune may share it)
        if theirs["vae_decoder"] == vae_identity(manifest, source):
            return None
        why = "another VAE"
    else:  # written before distill.json recorded the VAE: only the checkpoint can be compared
        ours = manifest.source.get("fingerprint")
        if not theirs.get("fingerprint") or not ours or theirs["fingerprint"] == ours:
            return None
        why = "another checkpoint, whose VAE it does not record"
    return (f"--vae-decoder {path} was distilled for {theirs.get('path', 'another model')} ({why}), not for {source}: "
            "it imitates that model's decoder, so this one's images may come out wrong; "
            f"distill one for this model (`sdopt distill-decoder {source} -o OUT`)")


def replacement_record(path: str | Path, config: dict[str, Any], model: dict[str, Any], quality: dict[str, Any] | None) -> dict[str, Any]:
    """What the manifest keeps of a replaced decoder: what replaced it, how it is fed, how close it decodes."""
    folder = Path(path)
    record: dict[str, Any] = {
        "by": ARCHITECTURE,
        "input_scale": input_scale(config, model),
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "from": str(folder.resolve()),
    }
    distilled = folder / "distill.json"
    if distilled.is_file():  # written by sdopt distill-decoder: what it was distilled from, and how well
        data = read_json(distilled)
        record["distilled"] = {k: data.get(k) for k in ("source", "held_out", "seconds", "settings")}
    if quality is not None:
        record["quality"] = quality
    return record
