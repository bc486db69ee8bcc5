"""Images in and out of the APIs: base64 PNG, with the limits that keep bad input a 422."""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np

from sdopt.serve.errors import RequestError

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
# SD latents -> RGB, the linear approximation AUTOMATIC1111 and ComfyUI use for previews of SD 1.x
# latents (4 channels). A preview of another model's latents is only a rough picture.
_LATENT_RGB = np.array(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]], dtype=np.float32
)


def _refuse(field: str, message: str) -> RequestError:
    return RequestError(field, f"{field}: {message}")


def decode_image(text: str, field: str, max_bytes: int, max_pixels: int):
    """A base64 image (with or without a ``data:image/...;base64,`` prefix) -> a PIL image (``read_image``)."""
    if not isinstance(text, str) or not text:
        raise _refuse(field, "give a base64-encoded PNG or JPEG image")
    text = _DATA_URL.sub("", text.strip(), count=1)
    if len(text) * 3 // 4 > max_bytes:
        raise _refuse(field, f"the image is larger than the {max_bytes / 2**20:g} MiB this server accepts")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(field, "not valid base64: send the image's bytes base64-encoded") from None
    return read_image(data, field, max_bytes, max_pixels)


def read_image(data: bytes, field: str, max_bytes: int, max_pixels: int):
    """An image file's bytes -> an RGB PIL image, or RGBA/LA/P when it carries transparency (a mask may mean it)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise _refuse(field, f"the image is larger than the {max_bytes / 2**20:g} MiB this server accepts")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise _refuse(field, f"the image is {image.width}x{image.height}, more than {max_pixels} pixels")
        image.load()
    except Image.DecompressionBombError:  # Image.open's own limit, before the size above could be read: a picture far larger
        raise _refuse(field, f"the image is more than {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError):
        raise _refuse(field, "not an image PIL can read: send a PNG or JPEG") from None
    except ValueError as exc:  # PIL's refusal of a damaged chunk, or of a text chunk inflating past its MAX_TEXT_CHUNK
        raise _refuse(field, f"not an image PIL can read ({exc}): send a PNG or JPEG") from None
    from sdopt.input_images import as_shown

    image = as_shown(image)
    if has_alpha(image):
        return image  # masks may carry their meaning in alpha; the caller converts
    return image.convert("RGB")


def has_alpha(image) -> bool:
    """Whether a PIL image carries transparency (an alpha channel, or a palette with a transparent entry)."""
    return image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)


def flatten(image, background: str = "#ffffff"):
    """An RGB picture, its transparent parts laid on ``background`` (AUTOMATIC1111's images.flatten with its
    img2img_background_color, white by default): what lies under alpha 0 is often black, or anything."""
    if not has_alpha(image):
        return image.convert("RGB")
    from PIL import Image

    laid = Image.new("RGBA", image.size, background)
    laid.alpha_composite(image.convert("RGBA"))
    return laid.convert("RGB")


# OpenAI's output_format -> PIL's format name and the media type sent
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


def image_bytes(image, output_format: str = "png", quality: int | None = None) -> bytes:
    """A PIL image as a file of ``output_format`` (OUTPUT_FORMATS), with its generation parameters where AUTOMATIC1111
    writes them (sdopt.infotext.save_options: a PNG's text chunk, a JPEG's or WebP's EXIF); ``quality`` 0-100 for
    JPEG and WebP (None: PIL's default)."""
    from sdopt.infotext import save_options

    pil_format = OUTPUT_FORMATS[output_format][0]
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **save_options(image, pil_format),
               **({"quality": quality} if quality is not None and pil_format != "PNG" else {}))
    return buffer.getvalue()


def png_bytes(image) -> bytes:
    """A PIL image as a PNG file, with its generation parameters (sdopt.infotext), as AUTOMATIC1111's API sends them."""
    return image_bytes(image, "png")


def encode_png(image) -> str:
    """A PIL image -> base64 PNG, without a data: prefix (what AUTOMATIC1111 and OpenAI return)."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def latent_preview_png(latents: np.ndarray, size: int = 64) -> bytes:
    """One image's latents (C, h, w) -> a small PNG: a look at the picture while it forms."""
    from PIL import Image

    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape[0] != _LATENT_RGB.shape[0]:
        rgb = np.repeat(latents[:1], 3, axis=0)
    else:
        rgb = np.einsum("chw,cr->rhw", latents, _LATENT_RGB)
    pixels = np.clip((rgb + 1) / 2, 0, 1).transpose(1, 2, 0)
    image = Image.fromarray((pixels * 255).round().astype(np.uint8))
    scale = size / max(image.size)
    if scale < 1 or image.width < size:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
