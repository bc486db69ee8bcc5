"""Init images, masks and Diffusers' img2img/inpaint latents, shared by the SD 1.x and SDXL img2img tests.

Diffusers turns a PIL image into a tensor with channels-last strides, and PyTorch's CPU convolution
then takes another kernel (tests/test_img2img.py says by how much): ``contiguous`` gives Diffusers the
same pixels laid out as ours, so the parity tests compare the same arithmetic.
"""

import numpy as np
import torch
from PIL import Image

from sdopt import GenerateRequest
from sdopt.runtime.schedulers import make_scheduler


def picture(seed: int = 0, size=(64, 64)) -> Image.Image:
    """A deterministic picture with structure (gradients and a disc), so the encoder sees more than noise."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05).astype(float)
    rng = np.random.default_rng(seed)
    rgb = np.stack([x, y, disc], axis=-1) * 200 + rng.integers(0, 40, size=(h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def mask_image(size=(64, 64)) -> Image.Image:
    """White (repaint) in a rectangle off the centre, black elsewhere."""
    w, h = size
    pixels = np.zeros((h, w), np.uint8)
    pixels[h // 4 : h * 3 // 4, w // 8 : w // 2] = 255
    return Image.fromarray(pixels, "L")


def contiguous(image: Image.Image) -> torch.Tensor:
    """The image as Diffusers' preprocessing reads it ([0, 1], NCHW), but laid out contiguously."""
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def diffusers_latents(pipe, request: GenerateRequest, image=None, **extra) -> np.ndarray:
    """Diffusers' final latents, caught at its last step (after inpainting's blend), and its images in [0, 1]."""
    pipe.scheduler = make_scheduler(request.scheduler, dict(pipe.scheduler.config))
    caught = {}

    def catch(_pipe, _i, _t, kwargs):
        caught["latents"] = kwargs["latents"]
        return {}

    seeds = request.seeds
    generator = [torch.Generator("cpu").manual_seed(s) for s in seeds] if seeds else torch.Generator("cpu").manual_seed(request.seed)
    images = pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, image=contiguous(request.init_image) if image is None else image,
        strength=request.strength, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
        num_images_per_prompt=request.num_images, generator=generator, output_type="np", callback_on_step_end=catch,
        **extra,
    ).images
    return caught["latents"].numpy(), images
