"""Calibrating an inpainting checkpoint: its 9-channel UNet takes inpainting requests only, so NNCF's
int8-static cannot calibrate it on generations from text; it repaints images the user gives instead.

Calibration run *k* repaints image *k* mod their number at strength 1 (every noise level) under
``calibration_mask(k)``. The recipe records the images' names and sha256 (``inpainting_record``), so a
bench that repaints one of them can say its quality is measured on what calibration saw
(``calibrated_on``: the bench reads recipes with it, so this module imports neither OpenVINO nor NNCF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdopt.errors import SdoptError
from sdopt.manifest import Manifest

def check_calibration_images(source: Path, manifest: Manifest, images: tuple[str, ...] | None) -> None:
    """An inpainting checkpoint calibrates on images it repaints; any other on its own generations from text."""
    from sdopt.runtime.conditioning import is_inpainting

    inpainting = is_inpainting(manifest, source)
    if inpainting and images is None:
        raise SdoptError("this is an inpainting checkpoint (its UNet reads the mask and the masked image): int8-static calibrates it "
                         "repainting images, so give --calibration-images FOLDER (a few photos like the ones it will inpaint; "
                         "sdopt draws the masks)")
    if images is not None and not inpainting:
        raise SdoptError("--calibration-images is for inpainting checkpoints: this one is calibrated on its own generations from "
                         "the calibration prompts")
    from sdopt.input_images import open_image

    for path in images or ():
        open_image(path, "--calibration-images")  # every file readable before any slow work


def calibration_mask(seed: int, height: int, width: int):
    """The mask a calibration run repaints (white) on an inpainting checkpoint, drawn from its seed: every
    fourth run the whole image (SD's inpainting training masks everything a quarter of the time, so the
    UNet sees its text-to-image case), else one to three rectangles, each a fifth to a half of each side."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    mask = Image.new("L", (width, height), 255 if seed % 4 == 3 else 0)
    if seed % 4 != 3:
        draw = ImageDraw.Draw(mask)
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(side * rng.uniform(0.2, 0.5)) for side in (width, height))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill=255)
    return mask


def calibration_image(image, height: int, width: int):
    """A calibration image at the size calibration runs: its mask is drawn at that size, and a request takes a mask of
    its init image's size only (a photo of another size was refused, blaming a mask the user never gave). Lanczos, as
    the pipeline's own resize (runtime.conditioning), so an image of that size already is unchanged."""
    from PIL import Image

    image = image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), resample=Image.Resampling.LANCZOS)


MASKS = "drawn from each run's seed: the whole image every fourth run, else 1-3 rectangles of 1/5-1/2 of each side"
INPAINTING_STRENGTH = 1.0  # calibration repaints from pure noise: every noise level the UNet sees, as Diffusers' default


def inpainting_record(images: tuple[str, ...]) -> dict[str, Any]:
    """What a calibrated component's recipe says of the images it repainted (``calibration.inpainting``)."""
    from sdopt.file_reading import sha256_file

    return {"images": [Path(p).name for p in images], "sha256": [sha256_file(p) for p in images], "masks": MASKS,
            "strength": INPAINTING_STRENGTH}


def calibrated_on(manifest: Manifest, image_sha256: str) -> list[str]:
    """The components of an artifact whose int8 calibration repainted the image with this sha256 (as
    ``inpainting_record`` records it): judged on that image, their quality is measured on what they were fitted to."""
    found = []
    for name, entry in manifest.components.items():
        calibration = (entry.quantization or {}).get("calibration") or {}
        if image_sha256 in (calibration.get("inpainting") or {}).get("sha256", ()):
            found.append(name)
    return found
