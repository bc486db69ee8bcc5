"""Where the one loop starts, and what it does after each step: text-to-image, img2img, inpainting.

img2img and inpainting are options of the same loop, not second loops. Both
follow Diffusers step for step (tests/test_img2img.py holds them to it):

- img2img (StableDiffusionImg2ImgPipeline): the init image is resized to the
  request's size and put in [-1, 1]; the VAE encoder gives the posterior's mean
  and log-variance, which is sampled with the generator and scaled by the VAE
  scaling factor; ``strength`` keeps only the last steps of the schedule, and
  the image latents are noised to the first timestep kept.
- inpainting with a 4-channel UNet (StableDiffusionInpaintPipeline's "legacy"
  path, for checkpoints not trained to inpaint): the same start (pure noise at
  strength 1), and after every step the part outside the mask is put back:
  the image latents noised to the next timestep (clean after the last step).

Random draws come in Diffusers' order: the posterior sample, then the noise,
then (inpainting) the masked image's posterior sample. See runtime/noise.py for
one generator per batch or one per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdopt.errors import SdoptError, argument
from sdopt.request import GenerateRequest
from sdopt.runtime.noise import Noise

Encode = Callable[[np.ndarray], np.ndarray]  # pixels (N, 3, H, W) in [-1, 1] -> latent_parameters (N, 2C, h, w)


@dataclass
class Start:
    """The loop's starting point: latents, the timesteps to run, and what to do after each step."""

    latents: Any  # torch float32 (batch, C, h, w)
    timesteps: Any  # torch: scheduler.timesteps, or its tail when strength < 1
    after_step: Callable[[Any, int], Any] | None = None  # (latents after step i, i) -> latents
    # An inpainting UNet's extra input channels, concatenated to the scaled latents every step:
    # torch float32 (batch, 1 + C, h, w), the mask and the masked image's latents.
    unet_extra: Any = None


def start(request: GenerateRequest, scheduler: Any, noise: Noise, model: dict[str, Any], encode: Encode,
          inpainting_unet: bool = False) -> Start:
    """The start for this request; ``scheduler.set_timesteps`` has been called. ``inpainting_unet``: the
    UNet reads the mask and the masked image's latents too (9 channels; check_artifact asked for a mask)."""
    import torch

    factor = model["vae_scale_factor"]
    shape = (request.batch_size, model["latent_channels"], request.height // factor, request.width // factor)
    if not request.image_to_image:
        # Text to image (StableDiffusionPipeline.prepare_latents): noise at the scheduler's first sigma.
        return Start(noise.randn(shape) * scheduler.init_noise_sigma, scheduler.timesteps)

    timesteps = strength_timesteps(scheduler, request.steps, request.strength)
    first = timesteps[:1].repeat(shape[0])
    if request.init_latents is not None:
        # Diffusers' img2img given latents as its image: they are the start, noised; no encoder, no posterior draw.
        given = torch.from_numpy(np.ascontiguousarray(request.init_latents, dtype=np.float32))
        rows = list(range(len(given))) if len(given) == request.batch_size else rows_of(len(given), request)  # one per image, else as images
        return Start(scheduler.add_noise(given[torch.tensor(rows)], noise.randn(shape), first), timesteps)
    images = request.init_images
    image_pixels = np.concatenate([pixels(im, request.height, request.width) for im in images])
    image_latents = None
    # An inpainting UNet at strength 1 starts from noise alone: Diffusers then does not encode the image
    # (no posterior draw before the noise); every other start does.
    if not (inpainting_unet and request.strength == 1.0):
        image_latents = model["vae_scaling_factor"] * sample_posterior(encode(image_pixels), noise, rows_of(len(images), request))
    fresh = noise.randn(shape)
    if request.mask_image is None:
        return Start(scheduler.add_noise(image_latents, fresh, first), timesteps)

    masks = request.mask_images
    mask = latent_mask(masks, request, shape[2:])
    if image_latents is not None:
        image_latents = masked_content(image_latents, mask, fresh, request.masked_content)
    # Inpainting: pure noise at strength 1 (is_strength_max), else the image noised like img2img.
    latents = fresh * scheduler.init_noise_sigma if request.strength == 1.0 else scheduler.add_noise(image_latents, fresh, first)
    # Diffusers encodes the masked image here (the init image where the mask keeps it, 0 where it
    # repaints; images and masks broadcast) and samples its posterior with the generator.
    masked_rows = max(len(images), len(masks))
    if inpainting_unet:  # the UNet reads the mask and those latents every step, instead of a blend after it
        keep = torch.cat([mask_pixels(m, request.height, request.width) for m in masks]) < 0.5
        masked_latents = sample_posterior(encode((torch.from_numpy(image_pixels) * keep).numpy()), noise, rows_of(masked_rows, request))
        return Start(latents, timesteps, unet_extra=torch.cat([mask, model["vae_scaling_factor"] * masked_latents], dim=1))
    # A text-to-image UNet does not read them: skip the encoder but draw the same numbers (same shape,
    # dtype and order), so an ancestral scheduler's later draws still match Diffusers'.
    noise.randn((shape[0] if noise.per_image else masked_rows, *shape[1:]))

    def blend(latents, i: int):
        kept = image_latents
        if i < len(timesteps) - 1:  # no noise after the last step
            kept = scheduler.add_noise(image_latents, fresh, timesteps[i + 1 : i + 2])
        return (1 - mask) * kept + mask * latents

    return Start(latents, timesteps, blend)


# --- the pieces, each one Diffusers function ----------------------------------------------------
def strength_timesteps(scheduler: Any, steps: int, strength: float):
    """Diffusers' get_timesteps: strength s keeps the last int(steps x s) steps of the schedule. A scheduler
    that takes the strength itself (LCMScheduler: all ``steps`` spread over the noise levels below it, as
    Diffusers' LatentConsistencyModelImg2ImgPipeline asks) is given it."""
    import inspect

    if "strength" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(steps, device="cpu", strength=strength)
        return scheduler.timesteps
    kept = min(int(steps * strength), steps)
    t_start = max(steps - kept, 0)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return scheduler.timesteps[t_start * scheduler.order :]


def masked_content(image_latents, mask, fresh, content: str):
    """The image latents the start is noised from, under the mask (1 = repaint) as GenerateRequest.masked_content asks:
    AUTOMATIC1111's inpainting_fill 2 puts its random tensor there — the one its sampler starts from, the same seeds'
    draw, so here the start's own noise — and 3 zeros. Only the start reads the masked part (each step's blend keeps
    the image outside the mask)."""
    if content == "noise":
        return image_latents * (1 - mask) + fresh * mask
    if content == "zeros":
        return image_latents * (1 - mask)
    return image_latents


def rows_of(count: int, request: GenerateRequest) -> list[int]:
    """Which of ``count`` given images each row uses: the one image, or its prompt's (rows are prompt-major)."""
    return [0 if count == 1 else row // request.num_images for row in range(request.batch_size)]


def pixels(image: Any, height: int, width: int) -> np.ndarray:
    """VaeImageProcessor.preprocess(image, height, width): Lanczos resize, [0, 255] -> [-1, 1], (1, 3, H, W)."""
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")  # the encoder takes 3 channels (Diffusers would pass RGBA's 4 and fail)
    image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    array = np.array(image).astype(np.float32) / 255.0
    return np.ascontiguousarray((2.0 * array - 1.0).transpose(2, 0, 1)[None])


def sample_posterior(parameters: np.ndarray, noise: Noise, rows: list[int]):
    """A sample of the VAE's Gaussian (DiagonalGaussianDistribution.sample), one per row.

    With one generator Diffusers samples each given image once and repeats the
    latents over the batch; with one generator per image, each row draws its own.
    """
    import torch

    mean, logvar = torch.from_numpy(parameters).chunk(2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    index = torch.tensor(rows)
    if noise.per_image:
        mean, std = mean[index], std[index]
        return mean + std * noise.randn(tuple(mean.shape))
    return (mean + std * noise.randn(tuple(mean.shape)))[index]


def mask_pixels(mask: Any, height: int, width: int):
    """The mask as Diffusers' mask processor reads it: resized, grayscale, binarized (white = 1 = repaint)."""
    import torch
    from PIL import Image

    mask = mask.resize((width, height), resample=Image.Resampling.LANCZOS).convert("L")
    array = np.array(mask).astype(np.float32) / 255.0
    return torch.from_numpy((array >= 0.5).astype(np.float32)[None, None])


def latent_mask(masks: list, request: GenerateRequest, size: tuple[int, int]):
    """(batch, 1, h, w): each row's mask at the latents' size (nearest, as prepare_mask_latents does)."""
    import torch

    mask = torch.cat([mask_pixels(m, request.height, request.width) for m in masks])
    mask = torch.nn.functional.interpolate(mask, size=tuple(size))
    return mask[torch.tensor(rows_of(len(masks), request))]


# --- what the artifact must have --------------------------------------------------------------------
def inpainting_channels(model: dict[str, Any]) -> int:
    """An inpainting UNet's input channels: the latents, the mask, the masked image's latents (9 on SD)."""
    return 2 * model["latent_channels"] + 1


def check_artifact(request: GenerateRequest, manifest: Any, components: dict[str, Any], unet_channels: int | None) -> None:
    """Refuse, before any work, a request this artifact cannot run: an image-conditioned one without
    the VAE encoder, any but inpainting on an inpainting UNet, a UNet of another input width.
    unet_channels: the UNet's input channels (``unet_in_channels``), None when unknown."""
    latent, inpainting = manifest.model["latent_channels"], inpainting_channels(manifest.model)
    if unet_channels not in (None, latent, inpainting):
        raise SdoptError(f"this artifact's UNet takes {unet_channels} input channels; sdopt runs UNets of {latent} "
                         f"(text-to-image) or {inpainting} (inpainting: latents, mask and masked image)")
    if unet_channels == inpainting and request.mask_image is None:
        raise SdoptError(
            f"this is an inpainting checkpoint (its UNet reads {inpainting} channels: latents, mask and masked image): "
            f"it needs {argument('init_image')} and {argument('mask_image', flag='--mask')}, as Diffusers' {manifest.pipeline_family.inpaint_pipeline} "
            "does; for text-to-image or img2img use a text-to-image checkpoint", field="mask_image"
        )
    if request.init_latents is not None:
        factor = manifest.model["vae_scale_factor"]
        want = (latent, request.height // factor, request.width // factor)
        if tuple(request.init_latents.shape[1:]) != want:
            raise SdoptError(f"init_latents are {tuple(request.init_latents.shape[1:])} (channels, height, width); a {request.width}x{request.height} "
                             f"request on this model starts from {want}: give latents of the request's size (or ask for theirs)", field="init_latents")
    if request.init_image is None:
        return
    if "vae_encoder" not in components:
        raise SdoptError(
            f"init_image needs the VAE encoder (img2img and inpainting start from the image's latents), and this "
            f"{manifest.backend} artifact has no vae_encoder component (it has {', '.join(sorted(components))}). "
            "Export it again from the Diffusers checkpoint: `sdopt export` includes vae_encoder whenever the "
            "checkpoint's vae/ has its weights; or generate with the Diffusers folder itself", field="init_image"
        )


def unet_config(manifest: Any, folder: Path | None) -> dict[str, Any]:
    """The UNet's config.json (every layout keeps it); empty when there is none to read."""
    entry = manifest.components.get("unet")
    if folder is None or entry is None:
        return {}
    try:
        config = json.loads((folder / entry.folder / "config.json").read_text(encoding="utf-8"))  # whatever the locale
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def unet_in_channels(manifest: Any, folder: Path | None, config: dict[str, Any] | None = None) -> int | None:
    """The UNet's input channels from its config.json (``config``: already read), None when unknown."""
    config = unet_config(manifest, folder) if config is None else config
    try:
        return int(config["in_channels"])
    except (KeyError, ValueError, TypeError):
        return None


def is_inpainting(manifest: Any, folder: Path | None) -> bool:
    """Whether the artifact's UNet is an inpainting one (latents, mask, masked image): it takes inpainting requests only."""
    return unet_in_channels(manifest, folder) == inpainting_channels(manifest.model)


def masked_content_notices(request: GenerateRequest) -> list[str]:
    """A masked_content that cannot change the image (strength 1 starts from noise alone, as Diffusers does)."""
    if request.masked_content == "original" or request.mask_image is None or request.strength < 1.0:
        return []
    return [f"{argument('masked_content', request.masked_content)} changes where inpainting starts only below strength 1; at strength 1 "
            "every start is pure noise (as in Diffusers): lower strength for it to matter"]


def resize_notices(request: GenerateRequest, static_shapes: dict[str, int] | None = None) -> list[str]:
    """A warning when the init image is resized to the request's size (as Diffusers does when given height/width);
    none when it is only trimmed to the multiples of 8 below its size, which is all a size can be (Diffusers' own
    rounding, and what sdopt generate asks for an image of another size). An artifact built for one size
    (``static_shapes``) would refuse the image's own size, which the advice named: it says to crop the image instead."""
    want = (request.width, request.height)
    sizes = dict.fromkeys(im.size for im in request.init_images if (im.size[0] - im.size[0] % 8, im.size[1] - im.size[1] % 8) != want)
    keep = (f"this artifact runs {want[0]}x{want[1]} only: crop the image to that shape to keep its proportions"
            if (static_shapes or {}).get("height") else "give height and width of the image's size, multiples of 8, to keep its proportions")
    return [f"{argument('init_image')} is {w}x{h}; it was resized to the request's {want[0]}x{want[1]} ({keep})" for w, h in sizes]
