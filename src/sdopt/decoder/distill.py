"""``sdopt distill-decoder MODEL -o OUT``: train a tiny decoder against a model's own VAE decoder.

1. The model generates latents with its own loop (PyTorch fp32, the bench's
   usual settings) from prompts: the shapes dataset's captions unless a prompt
   file is given. Those are what the decoder will see at run time.
2. The full decoder decodes each once: those images are the targets.
3. An AutoencoderTiny (TAESD's layout, ``tiny.tiny_config``) learns to map the
   latents to the targets (L1 + L2, objects weighted as in the shapes VAE's
   training), on random crops so a step costs little; one latent in eight is
   held out and never trained on. ``--init`` starts from a tiny decoder the user
   already has (TAESD's published weights) instead of random weights.

Deterministic by seed on a given machine and library versions. Written
atomically: ``config.json`` + weights (a Diffusers AutoencoderTiny folder,
loadable by ``AutoencoderTiny.from_pretrained``), ``distill.json`` (settings,
held-out PSNR, the probe's PSNR, FLOPs against the full decoder's, timings,
machine), ``training/loss.csv`` and ``loss.png``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdopt.errors import SdoptError, did_you_mean, require


@dataclass(frozen=True)
class DistillSettings:
    seed: int = 0
    latents: int = 256  # generated latents; one in eight held out
    prompts: tuple[str, ...] | None = None  # None: the shapes dataset's captions
    steps_per_image: int = 20  # denoising steps when generating the latents
    guidance_scale: float = 7.5
    height: int | None = None  # None: the model's default size
    width: int | None = None
    generate_batch: int = 8
    channels: int | None = None  # None: min(64, the full decoder's narrowest stage)
    train_steps: int = 1500
    batch: int = 16
    crop: int = 16  # latent side of a training crop (whole latents when smaller)
    lr: float = 1e-3
    warmup_steps: int = 50
    object_weight: float = 5.0
    threads: int = 0  # 0: every core

    @classmethod
    def from_table(cls, table: Any, where: str, **defaults: Any) -> "DistillSettings":
        """Settings from a profile's ``distill`` table over ``defaults`` (the bench's size), checked: an unknown key, a
        value of the wrong kind or out of range is an SdoptError that starts with ``where``."""
        import dataclasses

        if not isinstance(table, dict):
            raise SdoptError(f"{where}: distill is a table, such as distill = {{ train_steps = 300 }}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in table.items():
            if key not in fields:
                raise SdoptError(f"{where}: distill has no key {key!r}{did_you_mean(key, fields, quoted=True)}"
                                 f"; its keys are {', '.join(fields)}")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key == "prompts":
                if not (isinstance(value, list) and value and all(isinstance(p, str) for p in value)):
                    raise SdoptError(f"{where}: distill.prompts is a list of prompts, such as [\"a red circle\"]")
            elif not number or (isinstance(fields[key], int) and not float(value).is_integer()):  # nan, inf: not whole
                raise SdoptError(f"{where}: distill.{key} = {value!r}: give a number" + (" (a whole one)" if number else ""))
        settings = cls(**{**defaults, **{k: tuple(v) if k == "prompts" else v for k, v in table.items()}})
        try:
            settings.check()
        except SdoptError as exc:
            raise SdoptError(f"{where}: distill: {exc}") from None
        return settings

    def check(self) -> None:
        flags = {"steps_per_image": "--steps"}  # the CLI's names where they are not the field's
        for name in ("latents", "steps_per_image", "generate_batch", "train_steps", "batch", "crop"):
            if getattr(self, name) < 1:
                raise SdoptError(f"{flags.get(name, '--' + name.replace('_', '-'))} must be at least 1, got {getattr(self, name)}")
        if self.latents < 2:
            raise SdoptError("--latents must be at least 2: one is held out to measure the decoder")
        import math

        from sdopt.request import is_valid_guidance

        if not is_valid_guidance(self.guidance_scale):
            raise SdoptError(f"guidance_scale {self.guidance_scale}: a finite number from 0 (7.5 is usual)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SdoptError(f"lr {self.lr}: a learning rate is a positive number (the default 1e-3)")
        for name in ("seed", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise SdoptError(f"{name} {getattr(self, name)}: must be 0 or more" + (" (0: every core)" if name == "threads" else ""))
        if not (math.isfinite(self.object_weight) and self.object_weight >= 0):
            raise SdoptError(f"object_weight {self.object_weight}: a finite number, 0 or more (the default 5)")
        if self.channels is not None and self.channels < 1:  # 0 was taken for "the default"
            raise SdoptError(f"--channels must be at least 1, got {self.channels} (leave it out for the default)")
        from sdopt.request import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE):  # 0 was taken for the default
                raise SdoptError(f"--{name} {value}: must be a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE} (leave it out for the model's)")


def default_channels(vae_config: dict[str, Any]) -> int:
    """No wider than the full decoder's narrowest stage, and at most TAESD's 64: a tiny decoder must
    cost less than the one it replaces (the shapes model's full decoder starts at 16 channels)."""
    from sdopt.decoder.tiny import DEFAULT_CHANNELS

    return min(DEFAULT_CHANNELS, min(vae_config.get("block_out_channels", [DEFAULT_CHANNELS])))


def _prompts(settings: DistillSettings) -> list[str]:
    if settings.prompts:
        return [settings.prompts[i % len(settings.prompts)] for i in range(settings.latents)]
    from sdopt.shapes.scenes import captions

    return list(captions(settings.seed, settings.latents))


def generate_latents(pipeline, settings: DistillSettings, height: int, width: int, progress: bool) -> np.ndarray:
    """The model's final latents (scaled, as the UNet leaves them) for every prompt, each with its own seed."""
    from tqdm import tqdm

    from sdopt.request import GenerateRequest

    prompts = _prompts(settings)
    out = []
    bar = tqdm(total=len(prompts), desc="generating latents", unit="latent", disable=not progress)
    for start in range(0, len(prompts), settings.generate_batch):
        chunk = prompts[start : start + settings.generate_batch]
        request = GenerateRequest(prompt=chunk, steps=settings.steps_per_image, guidance_scale=settings.guidance_scale,
                                  height=height, width=width, seeds=[settings.seed * 100_003 + start + i for i in range(len(chunk))])
        out.append(pipeline.generate(request).latents)
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out)


def decoder_flops(module, latent_shape: tuple[int, ...]) -> int:
    """FLOPs of one ``decode`` call at this latent shape, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.decode(torch.zeros(latent_shape))
    return int(counter.get_total_flops())


def _crop(latents, targets, size: int, factor: int, generator):
    """The same random window of every latent and its image (the decoder is a convolution: crops train it as wholes do)."""
    import torch

    side_h, side_w = latents.shape[-2:]
    h, w = min(size, side_h), min(size, side_w)
    y = int(torch.randint(side_h - h + 1, (1,), generator=generator))
    x = int(torch.randint(side_w - w + 1, (1,), generator=generator))
    return latents[..., y : y + h, x : x + w], targets[..., y * factor : (y + h) * factor, x * factor : (x + w) * factor]


def train(tiny, latents, targets, settings: DistillSettings, factor: int, scale: float, generator, log: list, progress: bool) -> None:
    """Fit ``tiny`` (an AutoencoderTiny) so that its decoder maps scaled latents to the full decoder's images."""
    import torch
    from tqdm import tqdm

    from sdopt.shapes.train import cosine_lr, optimizer_step, reconstruction_loss

    params = list(tiny.decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    tiny.train()
    for step in tqdm(range(settings.train_steps), desc="distilling the decoder", unit="step", disable=not progress):
        index = torch.randint(len(latents), (settings.batch,), generator=generator)
        batch_latents, batch_targets = _crop(latents[index], targets[index], settings.crop, factor, generator)
        loss = reconstruction_loss(tiny.decode(batch_latents * scale).sample, batch_targets, settings.object_weight)
        optimizer_step(optimizer, loss, settings.lr * cosine_lr(step, settings.train_steps, settings.warmup_steps))
        log.append({"stage": "decoder", "step": step, "loss": float(loss.detach())})
    tiny.eval()


def distill_decoder(model: str | Path, out: str | Path, settings: DistillSettings = DistillSettings(), init: str | Path | None = None,
                    progress: bool = True, force: bool = False) -> Path:
    """Distill a tiny decoder for ``model`` (a PyTorch checkpoint) into ``out``; returns its path."""
    # First: a mistyped --channels 0 was refused only after the 10 s of importing torch and Diffusers below.
    settings.check()
    import torch

    from sdopt.runtime.versions import require_compatible_libraries

    require_compatible_libraries()  # one line, not the ImportError of a Diffusers that cannot import its models
    from diffusers import AutoencoderTiny

    from sdopt.decoder import probe, tiny as tiny_mod
    from sdopt.export.run import source_checkpoint
    from sdopt.machine import fingerprint
    from sdopt.outputs import atomic_output_dir, check_output_dir, local_inputs
    from sdopt.runtime.load import load
    from sdopt.runtime.torch import load_pretrained
    from sdopt.shapes.train import forget_load_path, save_curves

    require("matplotlib", "bench")  # loss.png, drawn once training is done: missing, it failed there with a traceback
    check_output_dir(out, force, local_inputs(model))  # before any slow work
    source, manifest = source_checkpoint(model, "distill")
    model_info = manifest.model
    vae_entry = manifest.components.get("vae_decoder")
    if vae_entry is None:
        raise SdoptError(f"{source} has no VAE decoder to distill from")
    from sdopt.runtime.conditioning import is_inpainting

    if is_inpainting(manifest, source):
        raise SdoptError(f"{source} is an inpainting checkpoint: a decoder is distilled on the latents a model makes from text, "
                         "which it does not; distill one from its text-to-image sibling (the same VAE) and give it with --vae-decoder PATH")
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    started = time.monotonic()
    timings: dict[str, float] = {}
    factor = int(model_info["vae_scale_factor"])
    side = int(model_info.get("sample_size", 64)) * factor
    height, width = settings.height or side, settings.width or side

    if init is not None:
        config = tiny_mod.read_config(init, "--init")
        tiny_mod.check_fits(config, model_info, f"--init {init}")
        tiny = tiny_mod.load_tiny(init)
    else:
        vae_config = json.loads((source / vae_entry.folder / "config.json").read_text(encoding="utf-8"))
        channels = settings.channels or default_channels(vae_config)
        torch.manual_seed(settings.seed)  # the initial weights
        tiny = AutoencoderTiny(**tiny_mod.tiny_config(model_info, channels))
    scale = tiny_mod.input_scale(dict(tiny.config), model_info)

    t0 = time.monotonic()
    with load(source) as pipeline:
        latents = generate_latents(pipeline, settings, height, width, progress)
    timings["generate_s"] = time.monotonic() - t0

    vae = load_pretrained("vae_decoder", source / vae_entry.folder)
    t0 = time.monotonic()
    with torch.no_grad():  # not inference_mode: training reads these tensors
        unscaled = torch.from_numpy(latents) / float(model_info["vae_scaling_factor"])
        targets = torch.cat([vae.decode(unscaled[i : i + 8]).sample for i in range(0, len(unscaled), 8)])
    timings["targets_s"] = time.monotonic() - t0

    held = max(1, len(latents) // 8)
    train_latents, train_targets = unscaled[held:], targets[held:]
    generator = torch.Generator().manual_seed(settings.seed)
    log: list[dict] = []
    t0 = time.monotonic()
    train(tiny, train_latents, train_targets, settings, factor, scale, generator, log, progress)
    timings["train_s"] = time.monotonic() - t0

    replacement = tiny_mod.wrap(tiny, scale)
    with torch.no_grad():
        decoded = replacement.decode(unscaled[:held]).sample.numpy()
    held_out = {**probe.psnr_summary(probe.to_uint8(targets[:held].numpy()), probe.to_uint8(decoded)), "latents": held}
    probed = probe.measure(vae, replacement, model_info)
    latent_shape = (1, int(model_info["latent_channels"]), height // factor, width // factor)
    flops = {"tiny": decoder_flops(replacement, latent_shape), "full": decoder_flops(vae, latent_shape), "at": f"{height}x{width}"}
    flops["ratio"] = flops["tiny"] / flops["full"]
    timings["total_s"] = time.monotonic() - started

    with atomic_output_dir(out, force=force, inputs=(source,)) as tmp:
        tiny.save_pretrained(tmp)
        # AutoencoderTiny registers block_out_channels (a copy of the decoder's) and then warns on loading it.
        forget_load_path(tmp / "config.json", also=("block_out_channels",))
        save_curves(tmp / "training", log, (("decoder", "tiny decoder vs the full decoder's images (L1 + L2)"),))
        report = {
            "source": {"path": str(source.resolve()), "fingerprint": manifest.source.get("fingerprint"), "artifact_id": manifest.artifact_id,
                       "vae_decoder": tiny_mod.vae_identity(manifest, source)},  # what export compares (tiny.distilled_elsewhere)
            "settings": {**asdict(settings), "init": str(init) if init else None, "height": height, "width": width,
                         "channels": list(tiny.config.decoder_block_out_channels)},
            "decoder_parameters": sum(p.numel() for p in tiny.decoder.parameters()),
            "full_decoder_parameters": sum(p.numel() for m in (vae.decoder, getattr(vae, "post_quant_conv", None)) if m is not None for p in m.parameters()),
            "held_out": held_out,
            "probe": probed,
            "flops": flops,
            "input_scale": scale,
            "seconds": timings,
            "machine": fingerprint(),
        }
        (tmp / "distill.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return Path(out).absolute()
