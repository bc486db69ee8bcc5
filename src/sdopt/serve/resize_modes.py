"""AUTOMATIC1111's img2img ``resize_mode``: how an init image (and its mask) of another aspect becomes width x height.

0 "Just resize" stretches it (Lanczos: what the loop does itself, as Diffusers' image processor); 1 "Crop and
resize" scales it to cover the size and crops the middle; 2 "Resize and fill" scales it to fit inside and fills
the borders by stretching its edge rows or columns; 3 "Just resize (latent upscale)" resizes the latents, which
sdopt does not: it stretches the image as 0 and the API names ``resize_mode`` as ignored. The arithmetic is
AUTOMATIC1111's (modules/images.py, resize_image, with no upscaler model), so the same picture comes out.
"""

from __future__ import annotations

from typing import Any

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = 0, 1, 2, 3
MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE)


def resize(image: Any, mode: int, width: int, height: int) -> Any:
    """``image`` as AUTOMATIC1111 gives it to img2img at width x height (the same image where it has that size)."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if image.size == (width, height):
        return image
    if mode not in (CROP_AND_RESIZE, RESIZE_AND_FILL):
        return image.resize((width, height), resample=lanczos)
    ratio, src_ratio = width / height, image.width / image.height
    cover = mode == CROP_AND_RESIZE
    wide = ratio > src_ratio if cover else ratio < src_ratio
    tall = ratio <= src_ratio if cover else ratio >= src_ratio
    src_w = width if wide else image.width * height // image.height
    src_h = height if tall else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=lanczos)
    out = Image.new(image.mode if image.mode in ("L", "RGB") else "RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if cover:
        return out
    if ratio < src_ratio:  # bands above and below: the first and last rows, stretched
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio:  # bands left and right: the first and last columns, stretched
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return out
