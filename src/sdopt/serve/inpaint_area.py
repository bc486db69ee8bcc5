"""AUTOMATIC1111's inpainting around the loop: "Only masked", "fill", and the overlay of the kept pixels.

AUTOMATIC1111's img2img API inpaints differently from Diffusers' pipelines by default, and its clients (canvas
editors sending a whole picture with a small mask) rely on it:

- **Only masked** (``inpaint_full_res``, its API's default): the mask's bounding box, widened by
  ``inpaint_full_res_padding`` and then to the request's aspect, is cut out of the init image and the mask, resized
  to width x height ("Resize and fill"), and repainted there; the result is resized back ("Crop and resize") and
  pasted where it was cut. The answer has the init image's size, not width x height. A blank mask leaves
  nothing to cut: the whole picture is repainted as img2img, without a mask.
- **fill** (``inpainting_fill`` 0, its API's default): before the loop, the masked part of the init image is
  filled with its surroundings' colours, blurred in from far to near, so nothing of what was there shows through.
  1 ("original") repaints the init image as it is, as Diffusers does. 2 ("latent noise") and 3 ("latent nothing")
  change the latents the loop starts from under the mask (GenerateRequest.masked_content "noise", "zeros").
- **The overlay** (both areas): outside the mask the answer keeps the init image's own pixels (the VAE round trip
  would change them), blended over the mask's blurred edge; for the whole picture the mask is doubled first, so the
  edge leans to the repainted side.

The arithmetic is AUTOMATIC1111's (modules/masking.py, modules/processing.py: StableDiffusionProcessingImg2Img.init,
apply_overlay), with PIL doing each step as there, so the same pixels come out of the same repainted image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.infotext import MASKED_CONTENT
from sdopt.serve.resize_modes import CROP_AND_RESIZE, RESIZE_AND_FILL, resize

FILL, ORIGINAL = 0, 1  # inpainting_fill values done here
LATENT_FILLS = {2: "noise", 3: "zeros"}  # the inpainting_fill values the loop does (GenerateRequest.masked_content)
# AUTOMATIC1111's words for inpainting_fill in its parameters ("Masked content") and its UI; the latent ones are the
# words sdopt.infotext writes for the loop's masked_content.
FILL_WORDS = {FILL: "fill", ORIGINAL: "original", **{n: MASKED_CONTENT[content] for n, content in LATENT_FILLS.items()}}
_FILLS = {words: n for n, words in FILL_WORDS.items()}
# The keys AUTOMATIC1111 writes for an inpainted image -> the img2img field each fills and how its text reads (its
# infotext rule: each field the request does not set). "Inpaint area" is "Only masked" or "Whole picture".
INFOTEXT_FIELDS: dict[str, tuple[str, Any]] = {
    "Mask blur": ("mask_blur", int), "Inpaint area": ("inpaint_full_res", lambda text: text == "Only masked"),
    "Masked area padding": ("inpaint_full_res_padding", int), "Masked content": ("inpainting_fill", lambda text: _FILLS[text.lower()]),
}


def parameters_of(blur: int, only_masked: bool, padding: int, fill: int) -> dict[str, Any]:
    """The pairs AUTOMATIC1111 writes for an inpainted image (its processing's extra_generation_params)."""
    return {"Mask blur": blur, "Inpaint area": "Only masked" if only_masked else None,
            "Masked area padding": padding if only_masked else None, "Masked content": FILL_WORDS.get(fill)}


def from_parameters(body: Any, parsed: dict[str, Any], given: set[str]) -> None:
    """An img2img request's inpainting fields from an image's parsed parameters, where the request does not set them."""
    from sdopt.serve.errors import RequestError

    values: dict[str, Any] = {}
    for key, (field, read) in INFOTEXT_FIELDS.items():
        if parsed.get(key) in (None, "") or (key == "Masked content" and str(parsed[key]).lower() not in _FILLS):
            continue  # absent, or a masked content AUTOMATIC1111 has no word for: the request's own
        try:
            values[field] = read(str(parsed[key]))
        except ValueError as exc:
            raise RequestError("infotext", f"infotext: a mask value is not a number ({exc})") from None
    for field, value in values.items():
        if field not in given:
            setattr(body, field, value)


@dataclass
class Area:
    """What the loop repaints, and how its answer goes back into the init image."""

    init: Any  # the picture the loop starts from, width x height
    mask: Any  # its mask, white = repaint; None: nothing to cut (a blank mask, Only masked), plain img2img
    overlay: Any  # RGBA: the init image, opaque where it is kept; None with no mask
    paste: tuple[int, int, int, int] | None  # Only masked: (x, y, w, h) of the cut in the init image; None: the whole picture


def crop_region(mask: Any, padding: int) -> tuple[int, int, int, int] | None:
    """The mask's bounding box widened by ``padding`` on each side within the picture; None for a blank mask
    (AUTOMATIC1111's masking.get_crop_region_v2)."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    if not padding:
        return box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_to_aspect(region: tuple[int, int, int, int], width: int, height: int, image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """The region grown on its short side to the aspect of width x height, kept inside the picture where it fits
    (AUTOMATIC1111's masking.expand_crop_region)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        grow = int((x2 - x1) / (width / height) - (y2 - y1))
        y1, y2 = _grow(y1, y2, grow, image_height)
    else:
        grow = int((y2 - y1) * (width / height) - (x2 - x1))
        x1, x2 = _grow(x1, x2, grow, image_width)
    return x1, y1, x2, y2


def _grow(low: int, high: int, grow: int, size: int) -> tuple[int, int]:
    low, high = low - grow // 2, high + grow - grow // 2
    if high >= size:
        low, high = low - (high - size), size
    if low < 0:
        low, high = 0, high - low
    return low, min(high, size)


def fill(image: Any, mask: Any) -> Any:
    """The masked part of ``image`` filled with its surroundings' colours (AUTOMATIC1111's masking.fill)."""
    from PIL import Image, ImageFilter

    filled, kept = Image.new("RGBA", image.size), _kept(image, mask)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def _kept(image: Any, mask: Any) -> Any:
    """``image`` where the mask keeps it, transparent where it repaints (premultiplied RGBa, as AUTOMATIC1111 pastes it)."""
    from PIL import Image, ImageOps

    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return kept


def _overlay(image: Any, mask: Any) -> Any:
    return _kept(image, mask).convert("RGBA")


def prepare(init: Any, mask: Any, width: int, height: int, *, only_masked: bool, padding: int, resize_mode: int, fill_mode: int) -> Area:
    """The loop's init image and mask for an AUTOMATIC1111 inpainting request (``mask``: rounded, inverted and
    blurred as asked, the init image's size; resize_mode 3, latent upscale, resizes as 0 here)."""
    region = crop_region(mask, padding) if only_masked else None
    if only_masked and region is None:  # nothing to cut: img2img of the whole picture, as AUTOMATIC1111 falls back
        return Area(init=resize(init, resize_mode, width, height), mask=None, overlay=None, paste=None)
    if region is not None:
        region = expand_to_aspect(region, width, height, mask.width, mask.height)
        overlay = _overlay(init, mask)
        x1, y1, x2, y2 = region
        loop_init = resize(init.crop(region), RESIZE_AND_FILL, width, height)
        loop_mask = resize(mask.crop(region), RESIZE_AND_FILL, width, height).convert("L")
        paste = (x1, y1, x2 - x1, y2 - y1)
    else:  # the whole picture (or a blank mask): resized as resize_mode says, the overlay from the doubled mask
        loop_init, loop_mask = resize(init, resize_mode, width, height), resize(mask, resize_mode, width, height).convert("L")
        overlay = _overlay(loop_init, loop_mask.point(lambda level: min(255, level * 2)))
        paste = None
    if fill_mode == FILL:
        loop_init = fill(loop_init, loop_mask)
    return Area(init=loop_init, mask=loop_mask, overlay=overlay, paste=paste)


def finish(image: Any, area: Area) -> Any:
    """The loop's answer put back: pasted where it was cut (Only masked), and the kept pixels laid over it
    (AUTOMATIC1111's apply_overlay). The image's parameters (image.info) are kept."""
    from PIL import Image

    if area.overlay is None:
        return image
    info = dict(image.info)
    if area.paste is not None:
        x, y, w, h = area.paste
        base = Image.new("RGBA", area.overlay.size)
        base.paste(resize(image, CROP_AND_RESIZE, w, h) if image.size != (w, h) else image, (x, y))
        image = base
    out = image.convert("RGBA")
    out.alpha_composite(area.overlay)
    out = out.convert("RGB")
    out.info.update(info)
    return out
