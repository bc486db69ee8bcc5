"""How close a replaced decoder decodes to the model's full decoder.

The probe: the shapes dataset's held-out ground-truth pictures (procedural,
nothing downloaded, the same for every model), resized so their latents are
16x16, encoded by the model's own VAE encoder (posterior mean), then decoded by
both decoders. PSNR is over the 8-bit images, as the bench computes it. These
are latents of real pictures, not of what the distillation trained on (latents
the model generated), so the figure is a held-out one for every decoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROBE_IMAGES = 8
PROBE_LATENT_SIDE = 16


def probe_pictures(model: dict[str, Any], count: int = PROBE_IMAGES) -> np.ndarray:
    """(count, 3, side, side) float32 in [-1, 1]: held-out shapes pictures at 16 latents a side."""
    from PIL import Image

    from sdopt.shapes.scenes import held_out_samples

    side = PROBE_LATENT_SIDE * int(model["vae_scale_factor"])
    pictures = [np.asarray(Image.fromarray(p).resize((side, side), Image.BICUBIC)) for p, _ in held_out_samples(count)]
    return (np.stack(pictures).astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


def to_uint8(decoded) -> np.ndarray:
    """Decoder output in [-1, 1], NCHW (a float32 copy of what it gives) -> uint8 NHWC, as the loop's images are made."""
    from sdopt.runtime.pipeline import to_uint8 as loop_pixels

    return loop_pixels(np.asarray(decoded, dtype=np.float32))


def psnr_summary(reference: np.ndarray, images: np.ndarray) -> dict[str, float]:
    from sdopt.quality import psnr_db

    values = [psnr_db(r, i) for r, i in zip(reference, images)]
    return {"psnr_db": float(np.mean(values)), "min_psnr_db": float(np.min(values))}


def measure(vae, replacement, model: dict[str, Any]) -> dict[str, Any]:
    """PSNR of ``replacement.decode`` against ``vae.decode`` (an AutoencoderKL) on the probe's latents."""
    import torch

    pixels = torch.from_numpy(probe_pictures(model))
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mean  # unscaled: what the loop hands a decoder
        reference = to_uint8(vae.decode(latents).sample.float().numpy())
        images = to_uint8(replacement.decode(latents).sample.float().numpy())
    side = pixels.shape[-1]
    return {**psnr_summary(reference, images), "images": len(pixels), "size": f"{side}x{side}",
            "probe": "held-out shapes pictures encoded by the model's VAE, decoded by both decoders"}
