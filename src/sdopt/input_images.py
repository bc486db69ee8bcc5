"""The pictures a user gives sdopt in files — init images, masks, calibration images — read as a viewer shows them:
EXIF orientation applied, 16-bit grayscale scaled to 8 bits. The server's decoder of uploaded images
(sdopt.serve.images.read_image) hands them on through as_shown too."""

from __future__ import annotations

from typing import Any

from sdopt.errors import SdoptError


def open_image(path: str | None, flag: str):
    """The PIL image at PATH (read now), or an SdoptError naming the flag."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return as_shown(image)
    except FileNotFoundError:
        raise SdoptError(f"{flag} {path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:  # ValueError: PIL's refusal of a
        # damaged chunk or a text chunk inflating past its MAX_TEXT_CHUNK (a few kB of zTXt can claim gigabytes)
        raise SdoptError(f"{flag} {path}: not an image sdopt can read (PNG, JPEG, WebP...): {exc}") from None
    except OSError as exc:
        raise SdoptError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def as_shown(image):
    """An input picture as a viewer shows it (_upright, _eight_bit): how the CLI's and the server's image readers
    (sdopt.serve.images.read_image) hand every init image and mask on."""
    return _eight_bit(_upright(image))


def _upright(image):
    """The picture as a viewer shows it: a camera's JPEG stored sideways with an EXIF orientation is turned the right way
    up, as Diffusers' load_image and AUTOMATIC1111's images.read do. The image itself when it has no orientation."""
    from PIL import ImageOps

    if image.getexif().get(0x0112, 1) == 1:  # ExifTags.Base.Orientation: 1 is upright
        return image
    return ImageOps.exif_transpose(image)


def _eight_bit(image):
    """A 16-bit grayscale image (a 16-bit PNG opens as PIL's I;16) scaled to 8-bit L: PIL's own conversion to RGB or L
    clips every value above 255, so the picture came out white. Any other image unchanged."""
    if not image.mode.startswith("I;16"):
        return image
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.asarray(image, dtype=np.float32) / 257).round().astype(np.uint8), "L")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(value: Any, flag: str) -> tuple[str, ...]:
    """The image files an option names (a folder's images, sorted, or the files themselves), as absolute paths;
    an SdoptError naming the flag when there are none. The files are not read here."""
    from pathlib import Path

    paths = [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SdoptError(f"{flag} {path}: no images in that folder ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise SdoptError(f"{flag} {path}: no such file or folder")
    if not files:
        raise SdoptError(f"{flag}: give a folder of images or image files")
    return tuple(str(f.absolute()) for f in files)
