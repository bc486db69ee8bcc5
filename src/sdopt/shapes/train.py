"""Train the shapes model: an SD-1-shaped pipeline that draws what its caption asks.

``sdopt train-shapes OUT`` writes a Diffusers Stable Diffusion folder (the
zoo's layout, so every exporter, quantizer and backend applies unchanged) whose
weights are trained on ``sdopt.shapes.scenes``:

1. the VAE (``AutoencoderKL``, image-to-latent factor 4: 64x64 images, 16x16
   latents) learns to reconstruct the pictures; its ``scaling_factor`` is then
   set from the latents' standard deviation, as Stable Diffusion's was;
2. the UNet and the text encoder learn together to denoise those latents, with
   the noise schedule and target the model ships with (zero terminal SNR,
   v-prediction: ``SHAPES.scheduler``), the caption dropped to "" one time in
   ten so that classifier-free guidance works.

Deterministic by seed on a given machine and library versions: every random
draw comes from generators seeded from it, and the step counts are fixed (not
"as many as fit in N minutes"). The loss curves go to ``OUT/training/``
(``loss.csv``, ``loss.png``) with the settings and the time it took.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sdopt.errors import require
from sdopt.shapes.scenes import samples


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    vae_steps: int = 700
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    object_weight: float = 10.0  # the VAE's loss on object pixels vs background ones (object_weights)
    images: int = 16_000  # training pairs, rendered once and encoded to latents once
    unet_steps: int = 6000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    threads: int = 0  # 0: every core

    def check(self) -> None:
        from sdopt.errors import SdoptError

        for name in ("vae_steps", "vae_batch", "images", "unet_steps", "unet_batch"):
            if getattr(self, name) < 1:
                raise SdoptError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 pictures -> float (N, 3, H, W) in [-1, 1], as the VAE takes them."""
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def object_weights(batch: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights: ``weight`` on the objects, 1 on the background.

    The shapes cover about a tenth of a picture, so a plain average is mostly
    background: the first VAE trained that way (500 steps) rebuilt the
    backgrounds well and the objects in the wrong colours (green came out brown,
    cyan blue), which no UNet can undo. The background is each picture's border
    median; an object pixel is one far from it.
    """
    border = torch.cat([batch[..., :2, :].flatten(2), batch[..., -2:, :].flatten(2), batch[..., :, :2].flatten(2), batch[..., :, -2:].flatten(2)], dim=2)
    background = border.median(dim=2).values[..., None, None]
    objects = (batch - background).abs().amax(dim=1, keepdim=True) > 0.3
    return 1.0 + (weight - 1.0) * objects.float()


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, object_weight: float) -> torch.Tensor:
    """L1 + L2 per pixel, objects weighted (object_weights): the VAE's loss, and the tiny decoder's (sdopt.decoder)."""
    error, weights = output - target, object_weights(target, object_weight)
    return ((error.abs() + error.pow(2)) * weights).mean() / weights.mean()


def optimizer_step(optimizer, loss: torch.Tensor, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_vae(vae, pictures: torch.Tensor, settings: TrainSettings, generator: torch.Generator, log: list, progress: bool) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    vae.train()
    for step in tqdm(range(settings.vae_steps), desc="training the VAE", unit="step", disable=not progress):
        batch = pictures[torch.randint(len(pictures), (settings.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = reconstruction_loss(vae.decode(latents).sample, batch, settings.object_weight)
        loss = recon + settings.kl_weight * posterior.kl().mean()
        optimizer_step(optimizer, loss, settings.vae_lr * cosine_lr(step, settings.vae_steps, settings.warmup_steps))
        log.append({"stage": "vae", "step": step, "loss": float(recon.detach())})
    vae.eval()


@torch.no_grad()
def encode_all(vae, pictures: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The posterior means of every picture (unscaled)."""
    return torch.cat([vae.encode(pictures[i : i + batch]).latent_dist.mean for i in range(0, len(pictures), batch)])


def train_denoiser(unet, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], settings: TrainSettings,
                   generator: torch.Generator, log: list, progress: bool) -> None:
    """UNet and text encoder together; they end holding their EMA weights (what is saved)."""
    from diffusers import DDPMScheduler

    from sdopt.zoo.configs import SHAPES

    # The noise levels and target the model ships with (its scheduler config), so sampling matches training.
    schedule = DDPMScheduler.from_config({k: v for k, v in SHAPES.scheduler.items() if not k.startswith("_")})
    predicts_velocity = schedule.config.prediction_type == "v_prediction"
    ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    caption_ids, empty_ids = ids[:-1], ids[-1:]
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    unet.train()
    text_encoder.train()
    for step in tqdm(range(settings.unet_steps), desc="training the UNet and text encoder", unit="step", disable=not progress):
        index = torch.randint(len(latents), (settings.unet_batch,), generator=generator)
        batch_ids = caption_ids[index].clone()
        dropped = torch.rand(settings.unet_batch, generator=generator) < settings.caption_dropout
        batch_ids[dropped] = empty_ids
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, schedule.config.num_train_timesteps, (settings.unet_batch,), generator=generator)
        noisy = schedule.add_noise(clean, noise, t)
        target = schedule.get_velocity(clean, noise, t) if predicts_velocity else noise
        states = text_encoder(input_ids=batch_ids)[0]
        loss = (unet(noisy, t, encoder_hidden_states=states).sample - target).pow(2).mean()
        for group in optimizer.param_groups:
            group["lr"] = settings.unet_lr * cosine_lr(step, settings.unet_steps, settings.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))  # a short average early, the long one later
        with torch.no_grad():
            for shadow, p in zip(ema, params):
                shadow.lerp_(p.detach(), 1 - decay)
        log.append({"stage": "unet", "step": step, "loss": float(loss.detach())})
    with torch.no_grad():
        for shadow, p in zip(ema, params):
            p.copy_(shadow)
    unet.eval()
    text_encoder.eval()


def forget_load_path(config: Path, also: tuple[str, ...] = ()) -> None:
    """Drop Diffusers' ``_name_or_path`` (the temporary folder the module was loaded from): two
    trainings of the same seed must write the same files, and the shipped ones no build path.
    ``also``: other keys to keep out of the file."""
    data = json.loads(config.read_text(encoding="utf-8"))
    removed = [key for key in ("_name_or_path", *also) if data.pop(key, None) is not None]
    if removed:
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_curves(folder: Path, log: list, panels: tuple[tuple[str, str], ...]) -> None:
    """``loss.csv`` (every logged step) and ``loss.png`` (one panel per (stage, title), log scale, smoothed)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stage", "step", "loss"])
        writer.writeheader()
        writer.writerows(log)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (stage, title) in zip(axes[0], panels):
        values = np.array([r["loss"] for r in log if r["stage"] == stage])
        if len(values):
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(values, alpha=0.25, linewidth=0.6)
            ax.plot(np.arange(len(smooth)) + window - 1, smooth)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=110)
    plt.close(fig)


def train_shapes(out: str | Path, settings: TrainSettings = TrainSettings(), progress: bool = True, force: bool = False) -> Path:
    """Train the shapes model into ``out`` (written atomically); returns its path. Runs on ``settings.threads`` torch
    threads, and gives the caller's count back after (a Python caller, or a test process, keeps its own)."""
    from sdopt.runtime.versions import require_compatible_libraries

    settings.check()
    require_compatible_libraries()  # one line, not the ImportError of a Diffusers that cannot import its models
    require("matplotlib", "bench")  # loss.png, drawn once training is done: missing, it failed there with a traceback
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    try:
        return _train(out, settings, progress, force)
    finally:
        torch.set_num_threads(previous)


def _train(out: str | Path, settings: TrainSettings, progress: bool, force: bool) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from sdopt.layouts import write_torch_manifest
    from sdopt.outputs import atomic_output_dir
    from sdopt.zoo.configs import MODELS
    from sdopt.zoo.writer import canonical_text_encoder_keys, without_transformers_progress_bar, write

    started = time.monotonic()
    out = Path(out)
    with atomic_output_dir(out, force=force) as tmp:
        # The zoo writes the architecture with its initial weights, tokenizer, scheduler and index.
        model_dir = tmp / "model"
        write(MODELS["shapes"], model_dir, seed=settings.seed, progress=False, untrained=True)
        vae = AutoencoderKL.from_pretrained(model_dir / "vae")
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
        with without_transformers_progress_bar():  # transformers' "Loading weights" bar printed through --quiet
            text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")

        pairs = list(tqdm(samples(settings.seed, settings.images), total=settings.images, desc="rendering", unit="image", disable=not progress))
        pictures, captions = _to_tensor([p[0] for p in pairs]), [p[1] for p in pairs]
        del pairs
        generator = torch.Generator().manual_seed(settings.seed)
        torch.manual_seed(settings.seed)  # every draw above takes ``generator``; this seeds any library draw that does not
        log: list[dict] = []
        timings = {}

        t0 = time.monotonic()
        train_vae(vae, pictures, settings, generator, log, progress)
        latents = encode_all(vae, pictures)
        scaling = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
        latents = latents * scaling
        timings["vae_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        train_denoiser(unet, text_encoder, tokenizer, latents, captions, settings, generator, log, progress)
        timings["unet_s"] = time.monotonic() - t0

        with without_transformers_progress_bar():
            for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
                module.save_pretrained(model_dir / name)
        canonical_text_encoder_keys(model_dir / "text_encoder" / "model.safetensors")
        for name in ("vae", "unet"):
            forget_load_path(model_dir / name / "config.json")
        for path in model_dir.iterdir():
            path.rename(tmp / path.name)
        model_dir.rmdir()
        write_torch_manifest(tmp, source={"zoo": "shapes", "seed": settings.seed, "trained": True}, stamp=False)
        timings["total_s"] = time.monotonic() - started
        save_curves(tmp / "training", log, (("vae", "VAE reconstruction (L1 + L2)"), ("unet", "UNet + text encoder: velocity prediction (MSE)")))
        from sdopt.machine import fingerprint

        (tmp / "training" / "settings.json").write_text(
            json.dumps({"settings": asdict(settings), "seconds": timings, "vae_scaling_factor": scaling, "machine": fingerprint()}, indent=2, default=str) + "\n"
        )
    return out.absolute()
