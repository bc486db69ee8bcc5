"""AUTOMATIC1111's hires fix (txt2img's ``enable_hr``): each image made at its size, upscaled, then repainted larger.

Two passes of the one loop, as AUTOMATIC1111 runs them: txt2img at width x height, then each image upscaled to
``hr_scale`` times that (or to ``hr_resize_x`` x ``hr_resize_y``; one of them alone keeps the aspect), down to a
multiple of 8, and repainted by img2img at ``denoising_strength`` (default 0.7, AUTOMATIC1111's slider's) in
``hr_second_pass_steps`` (0: the first pass's), with ``hr_sampler_name``, ``hr_prompt`` and ``hr_negative_prompt``
where given, each image from its own seed. The upscale is AUTOMATIC1111's: its "Latent" modes (the API's default)
interpolate the first pass's final latents (bilinear, bicubic, nearest; antialiased or not) and the second pass starts
from them without the VAE (GenerateRequest.init_latents); "Lanczos", "Nearest" and "None" (AUTOMATIC1111 then resizes
with Lanczos) resize the image, which the second pass encodes. Its model upscalers (ESRGAN, ...) are networks sdopt
does not have: those are done with Lanczos here, and ``info.sdopt_ignored`` names ``hr_upscaler``. Both sizes given with another aspect: the image is stretched
(AUTOMATIC1111 crops it). The images carry AUTOMATIC1111's parameters for a hires image: the first pass's, with
the denoising strength and the Hires keys.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sdopt.serve import jobs as J
from sdopt.serve.a1111_models import A1111_SIDE
from sdopt.serve.errors import RequestError

DEFAULT_STRENGTH = 0.7
LANCZOS, NEAREST = "Lanczos", "Nearest"
IMAGE_UPSCALERS = {LANCZOS: LANCZOS, NEAREST: NEAREST, "None": LANCZOS}  # the name asked -> the resize done
# AUTOMATIC1111's latent upscale modes (shared.latent_upscale_modes): torch's interpolate mode and antialias for each.
LATENT_MODES = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True), "Latent (bicubic)": ("bicubic", False),
                "Latent (bicubic antialiased)": ("bicubic", True), "Latent (nearest)": ("nearest", False),
                "Latent (nearest-exact)": ("nearest-exact", False)}
SAME_SAMPLER, SAME_SCHEDULE = "Use same sampler", "Use same scheduler"  # AUTOMATIC1111's choices meaning "the first pass's"


def chosen(value: str | None, same: str) -> str | None:
    """A hires sampler or schedule type the request chose; None where it keeps the first pass's."""
    return value if value not in (None, "", same) else None


def upscaler(name: str | None) -> tuple[str, bool]:
    """(the upscale done: a latent mode or an image resize, whether it is the one asked): AUTOMATIC1111's default,
    None, is "Latent"."""
    name = name or "Latent"
    if name in LATENT_MODES:
        return name, True
    done = IMAGE_UPSCALERS.get(name)
    return (done, True) if done else (LANCZOS, False)


def upscale_latents(latents: Any, mode: str, size: tuple[int, int]) -> Any:
    """AUTOMATIC1111's latent upscale: torch's interpolate of the (1, C, h, w) latents to ``size`` (h, w) in the mode's way."""
    import numpy as np
    import torch

    how, antialias = LATENT_MODES[mode]
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)), size=size, mode=how,
                                              **({"antialias": antialias} if how in ("bilinear", "bicubic") else {}))
    return resized.numpy()


def size_field(body: Any) -> str:
    """The field that sets the second pass's size, for errors: hr_resize_x (or _y) where given, else hr_scale."""
    return "hr_resize_x" if body.hr_resize_x else "hr_resize_y" if body.hr_resize_y else "hr_scale"


def target_size(body: Any, max_pixels: int) -> tuple[int, int]:
    """The second pass's width and height, multiples of 8; refused (before any picture is made that size) past
    ``max_pixels`` (sdopt serve --max-pixels)."""
    x, y = body.hr_resize_x or 0, body.hr_resize_y or 0
    for name, value in (("hr_resize_x", x), ("hr_resize_y", y)):
        if not 0 <= value <= max_pixels:
            raise RequestError(name, f"{name}={value}: must be 0 (from hr_scale) or a size in pixels within this server's {max_pixels} (--max-pixels)")
    width, height = body.width or A1111_SIDE, body.height or A1111_SIDE
    if x and y:
        w, h = x, y
    elif x or y:  # one side given: the other keeps the first pass's aspect, rounded down as AUTOMATIC1111's
        w, h = (x, x * height // width) if x else (y * width // height, y)
    else:
        scale = body.hr_scale if body.hr_scale is not None else 2.0
        if not (math.isfinite(scale) and scale > 0):
            raise RequestError("hr_scale", f"hr_scale={scale}: must be a finite number above 0 (2 doubles each side)")
        w, h = width * scale, height * scale
    if w * h > max_pixels:  # before int(): an absurd scale is refused here, not overflowed
        size = f"{w:.0f}x{h:.0f}" if math.isfinite(w * h) else "unbounded"
        raise RequestError(size_field(body), f"the hires pass would be {size}, more than this server's {max_pixels} pixels (--max-pixels)")
    w, h = int(w), int(h)
    return max(8, w - w % 8), max(8, h - h % 8)


def second_pass(body: Any, first: J.JobSpec, scheduler: str | None, max_pixels: int, done: J.Job | None = None,
                model: dict[str, Any] | None = None) -> list[J.JobSpec]:
    """A job per image of the first pass (``done``: its finished job, whose images and final latents it starts from);
    with ``done`` None, the first seed's job on a blank start (what the checks before the first pass need). ``model``:
    the artifact's model facts (Manifest.model: its latent channels and VAE scale factor)."""
    from PIL import Image

    width, height = target_size(body, max_pixels)
    mode, _ = upscaler(body.hr_upscaler)
    starts: list[dict[str, Any]]
    if mode in LATENT_MODES:
        import numpy as np

        model = model or {}
        channels, factor = model.get("latent_channels", 4), model.get("vae_scale_factor", 8)
        latents = done.latents if done is not None else np.zeros((1, channels, first.height // factor, first.width // factor), np.float32)
        starts = [{"init_latents": upscale_latents(latents[i:i + 1], mode, (height // factor, width // factor)), "init_image": None}
                  for i in range(len(latents))]
    else:
        resample = Image.Resampling.LANCZOS if mode == LANCZOS else Image.Resampling.NEAREST
        pictures = done.images if done is not None else [Image.new("RGB", (first.width, first.height))]
        starts = [{"init_image": picture.convert("RGB").resize((width, height), resample), "init_latents": None} for picture in pictures]
    return [
        dataclasses.replace(
            first, prompt=body.hr_prompt or first.prompt, negative_prompt=body.hr_negative_prompt or first.negative_prompt, seed=seed, n=1,
            steps=body.hr_second_pass_steps or first.steps, width=width, height=height, scheduler=scheduler, mask_image=None,
            loras=None if body.hr_prompt else first.loras,  # hr_prompt's own tags, or the first pass's (AUTOMATIC1111's)
            strength=body.denoising_strength if body.denoising_strength is not None else DEFAULT_STRENGTH, **start,
        )
        for seed, start in zip(first.seeds, starts)
    ]


def parameters(first_text: str, body: Any, second: J.JobSpec) -> str:
    """AUTOMATIC1111's parameters for a hires image: the first pass's, with its denoising strength and Hires keys."""
    from sdopt.infotext import with_pairs

    return with_pairs(first_text, {
        "Denoising strength": f"{second.strength:g}",
        "Hires upscale": f"{(body.hr_scale or 2.0):g}" if not (body.hr_resize_x or body.hr_resize_y) else None,
        RESIZE: f"{second.width}x{second.height}" if (body.hr_resize_x or body.hr_resize_y) else None,
        "Hires steps": body.hr_second_pass_steps or None, "Hires upscaler": body.hr_upscaler or "Latent",
        "Hires sampler": chosen(body.hr_sampler_name, SAME_SAMPLER), "Hires schedule type": chosen(body.hr_scheduler, SAME_SCHEDULE),
        "Hires prompt": body.hr_prompt or None, "Hires negative prompt": body.hr_negative_prompt or None})


# The Hires keys of an image's parameters -> the txt2img fields they fill (AUTOMATIC1111's infotext rule: each
# field the request does not set); any of them turns the hires fix on.
INFOTEXT_FIELDS = {"Hires upscale": ("hr_scale", float), "Hires steps": ("hr_second_pass_steps", int), "Hires upscaler": ("hr_upscaler", str),
                   "Hires sampler": ("hr_sampler_name", str), "Hires schedule type": ("hr_scheduler", str),
                   "Hires prompt": ("hr_prompt", str), "Hires negative prompt": ("hr_negative_prompt", str)}
RESIZE = "Hires resize"  # "WIDTHxHEIGHT"


def from_parameters(body: Any, parsed: dict[str, Any], given: set[str]) -> None:
    """Fill a txt2img request's hires fields from parsed parameters (sdopt.infotext.parse_parameters)."""
    values: dict[str, Any] = {}
    try:
        for key, (field, kind) in INFOTEXT_FIELDS.items():
            if parsed.get(key) not in (None, ""):
                values[field] = kind(parsed[key])
        if parsed.get(RESIZE):
            width, _, height = str(parsed[RESIZE]).partition("x")
            values["hr_resize_x"], values["hr_resize_y"] = int(width), int(height)
    except ValueError as exc:
        raise RequestError("infotext", f"infotext: a Hires value is not a number ({exc})") from None
    if values and "enable_hr" not in given:
        values["enable_hr"] = True
    for field, value in values.items():
        if field not in given:
            setattr(body, field, value)
