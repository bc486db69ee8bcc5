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
# "Crop and resize" resizes the whole picture (AUTOMATIC1111's pixels) up to this many times the output's pixels: an
# aspect up to 16 times the output's, as a 16:1 panorama cut to a square; past it, only the part kept (resize below).
_WHOLE_UP_TO = 16


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
    # At least 1 pixel: a picture of extreme aspect (1x1000 fitted into 64x64) scaled to 0, which PIL refuses (a 500).
    src_w = width if wide else max(1, image.width * height // image.height)
    src_h = height if tall else max(1, image.height * width // image.width)
    if cover and src_w * src_h > _WHOLE_UP_TO * width * height:
        # A picture of extreme aspect: only the part that is kept is resized (PIL's box), never the whole, which was
        # unbounded (65536x1 at 64x64: 4194304x64 pixels, 1.3 GB and 7 s; 16 million x 1, within --max-pixels x 16,
        # ~200 GB). The same picture but not the same bytes: PIL's two passes round in another order (a few levels).
        left, top = src_w // 2 - width // 2, src_h // 2 - height // 2
        x_scale, y_scale = image.width / src_w, image.height / src_h
        box = (left * x_scale, top * y_scale, (left + width) * x_scale, (top + height) * y_scale)
        return image.resize((width, height), resample=lanczos, box=box).convert(image.mode if image.mode in ("L", "RGB") else "RGB")
    resized = image.resize((src_w, src_h), resample=lanczos)
    out = Image.new(image.mode if image.mode in ("L", "RGB") else "RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
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
