"""A deterministic grounding judge: does a picture show what its shapes caption says?

For each object a caption names ("a red circle on the left") the judge looks for a blob of
that colour, checks the blob's shape and where its centroid lies:

* colour: each pixel is explained as a mix of the background (the median of the image's
  border) and one palette colour, ``pixel ~ background + t * (colour - background)``. A pixel's
  hue is the colour whose mixing line passes nearest to it; it belongs to that colour if it is
  at least half-way along (t >= 0.5) and near enough to the line. Mixing lines make antialiased or blurred edges
  count for their own colour instead of a lighter neighbouring one (a blurred red edge is not
  orange or pink). The largest 8-connected blob of the colour is the object; blobs smaller than
  ~0.6% of the picture are noise.
* shape: the blob, cropped to its bounding box and resampled to 16x16, is compared with a
  template of every shape (rendered by ``scenes.shape_alpha`` the same way, sharp and blurred);
  the nearest wins.
* position: the blob's centroid, in fractions of the picture, is given to the nearest anchor
  (left, right, top, bottom, center), which tolerates sloppy placement.

Pure numpy + Pillow, no randomness, a few milliseconds per 64x64 picture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from sdopt.shapes.scenes import ANCHORS, COLORS, IMAGE_SIZE, MAX_SIDE, MIN_SIDE, SHAPES, ShapeObject, parse_caption, shape_alpha

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float64)
_ANCHOR_NAMES = tuple(ANCHORS)
_ANCHOR_XY = np.array([ANCHORS[p] for p in _ANCHOR_NAMES])

BORDER = 2  # px of frame whose median is the background
HUE_MIN_MIX = 0.25  # a pixel's hue is decided among the colours it is at least this far towards
MIN_MIX = 0.5  # a pixel is a colour's if at least half-way from the background to it
MAX_MIX = 1.6  # ... and may overshoot it (darker, more saturated than the palette)
MAX_OFF_LINE = 60.0  # RGB distance from the mixing line beyond which a pixel is no colour
MIN_AREA = 0.006  # smallest blob, as a fraction of the picture (24 px at 64x64)
TEMPLATE_SIZE = 16
TEMPLATE_BLURS = (0.0, 1.0, 2.0)  # Gaussian radii (px at 64x64) of each shape's template variants


@dataclass(frozen=True)
class ObjectVerdict:
    object: ShapeObject
    color_found: bool
    shape_ok: bool  # only ever True when color_found
    position_ok: bool  # only ever True when color_found
    score: float  # (color_found + shape_ok + position_ok) / 3
    detected_shape: str | None = None  # what the blob looked like, for diagnosis
    detected_position: str | None = None

    @classmethod
    def checked(cls, obj: ShapeObject, color_found: bool, shape_ok: bool, position_ok: bool,
                detected_shape: str | None = None, detected_position: str | None = None) -> "ObjectVerdict":
        """The verdict of three checks, scored: shape and position count only where the colour was found."""
        shape_ok, position_ok = color_found and shape_ok, color_found and position_ok
        return cls(obj, color_found, shape_ok, position_ok, (color_found + shape_ok + position_ok) / 3, detected_shape, detected_position)


@dataclass(frozen=True)
class Verdict:
    score: float  # mean of the objects' scores, in [0, 1]
    objects: tuple[ObjectVerdict, ...]

    @classmethod
    def of(cls, objects: tuple[ObjectVerdict, ...]) -> "Verdict":
        return cls(score=float(np.mean([v.score for v in objects])), objects=tuple(objects))


def judge(image, caption: str) -> Verdict:
    """How well ``image`` (PIL image or uint8 HxWx3 array, any size) shows ``caption``."""
    objects = parse_caption(caption)
    labels = classify_pixels(_as_rgb(image))
    return Verdict.of(tuple(_judge_object(obj, labels) for obj in objects))


def judge_many(images: Iterable, captions: Iterable[str]) -> list[Verdict]:
    """``judge`` over pairs; images and captions must be equally many."""
    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    return [judge(image, text) for image, text in zip(images, captions)]


# --- pixels ---------------------------------------------------------------------------------


def as_pil_rgb(image) -> Image.Image:
    """A PIL image or a uint8 HxWx3 (or x4) array, as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image is a PIL image or a uint8 HxWx3 array, got dtype {array.dtype} shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def _as_rgb(image) -> np.ndarray:
    """A float 64x64x3 array; other sizes are resampled so thresholds stay in the same units."""
    pil = as_pil_rgb(image)
    if pil.size != (IMAGE_SIZE, IMAGE_SIZE):
        # BOX averages when shrinking (like the renderer's antialiasing); BILINEAR when enlarging.
        shrinking = min(pil.size) >= IMAGE_SIZE
        pil = pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX if shrinking else Image.BILINEAR)
    return np.asarray(pil, dtype=np.float64)


def _background(rgb: np.ndarray) -> np.ndarray:
    frame = np.concatenate([rgb[:BORDER].reshape(-1, 3), rgb[-BORDER:].reshape(-1, 3), rgb[:, :BORDER].reshape(-1, 3), rgb[:, -BORDER:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, the index into COLORS of its colour, or -1 for background / no palette colour.

    Hue first, then amount: the colour is the one whose mixing line passes nearest (among lines
    the pixel is at least HUE_MIN_MIX along), and the pixel is that colour's only if it is at
    least MIN_MIX along it. Deciding both at once would hand a half-blue edge pixel, just short
    of MIN_MIX on blue's line, to purple, whose line it is a little further along.
    """
    background = _background(rgb)
    to_color = _PALETTE - background  # K x 3: each colour's mixing line direction
    length2 = np.maximum((to_color**2).sum(axis=1), 1.0)
    offset = rgb - background  # H x W x 3
    dot = offset @ to_color.T  # H x W x K
    mix = dot / length2  # how far along each line
    along = np.clip(mix, 0.0, MAX_MIX)
    # |offset - along * to_color|, expanded so no H x W x K x 3 array is needed
    off_line2 = (offset**2).sum(axis=-1, keepdims=True) - 2 * along * dot + along**2 * length2
    off_line = np.sqrt(np.maximum(off_line2, 0.0))  # H x W x K
    off_line = np.where(mix >= HUE_MIN_MIX, off_line, np.inf)
    best = off_line.argmin(axis=-1)[..., None]
    best_off_line = np.take_along_axis(off_line, best, axis=-1)[..., 0]
    best_mix = np.take_along_axis(mix, best, axis=-1)[..., 0]
    return np.where((best_off_line <= MAX_OFF_LINE) & (best_mix >= MIN_MIX), best[..., 0], -1)


def _largest_blob(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected component of mask (ties: the lowest-labelled), or None if empty."""
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    inside = mask[y0:y1, x0:x1]  # work on the mask's bounding box only
    h, w = inside.shape
    labels = np.where(inside, np.arange(1, h * w + 1).reshape(h, w), 0)
    padded = np.zeros((h + 2, w + 2), dtype=labels.dtype)
    # Spread each component's largest pixel index over it; converges in (component length) steps.
    while True:
        padded[1:-1, 1:-1] = labels
        spread = labels.copy()
        for dy in range(3):
            for dx in range(3):
                np.maximum(spread, padded[dy : dy + h, dx : dx + w], out=spread)
        spread[~inside] = 0
        if np.array_equal(spread, labels):
            break
        labels = spread
    ids, counts = np.unique(labels[inside], return_counts=True)
    blob = np.zeros_like(mask)
    blob[y0:y1, x0:x1] = labels == ids[counts.argmax()]
    return blob


# --- one object -----------------------------------------------------------------------------


def _judge_object(obj: ShapeObject, labels: np.ndarray) -> ObjectVerdict:
    blob = _largest_blob(labels == _COLOR_NAMES.index(obj.color))
    if blob is None or blob.sum() < MIN_AREA * blob.size:
        return ObjectVerdict.checked(obj, False, False, False)
    shape, position = classify_shape(blob), classify_position(blob)
    return ObjectVerdict.checked(obj, True, shape == obj.shape, position == obj.position, shape, position)


def classify_position(blob: np.ndarray) -> str:
    """The anchor nearest to the blob's centroid (relative coordinates)."""
    ys, xs = np.nonzero(blob)
    centroid = np.array([(xs.mean() + 0.5) / blob.shape[1], (ys.mean() + 0.5) / blob.shape[0]])
    return _ANCHOR_NAMES[int(np.linalg.norm(_ANCHOR_XY - centroid, axis=1).argmin())]


def classify_shape(blob: np.ndarray) -> str:
    """The shape with a template nearest (mean absolute difference) to the blob's normalised crop."""
    crop = _normalised_crop(blob)
    distances = [np.abs(crop - variants).mean(axis=(1, 2)).min() for variants in _templates()]
    return SHAPES[int(np.argmin(distances))]


def _normalised_crop(blob: np.ndarray) -> np.ndarray:
    """The blob's bounding box resampled to TEMPLATE_SIZE square: size and aspect drop out."""
    ys, xs = np.nonzero(blob)
    crop = blob[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    resized = Image.fromarray(crop).resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.BILINEAR)
    return np.asarray(resized)


@lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, ...]:
    """Per shape, one template per blur level (a stack): each the mean normalised crop of rendered
    blobs over the dataset's sizes and sub-pixel offsets. Blurred variants keep a blurry picture's
    rounded corners (a model's, say) from reading as another shape."""
    templates = []
    for shape in SHAPES:
        variants = []
        for radius in TEMPLATE_BLURS:
            crops = []
            for side in np.linspace(MIN_SIDE, MAX_SIDE, 4):
                for shift in (0.0, 0.25, 0.5, 0.75):
                    alpha = shape_alpha(shape, (IMAGE_SIZE / 2 + shift, IMAGE_SIZE / 2 + shift / 2), side, IMAGE_SIZE)
                    crops.append(_normalised_crop(_blurred(alpha, radius) >= MIN_MIX))
            variants.append(np.mean(crops, axis=0))
        templates.append(np.stack(variants))
    return tuple(templates)


def _blurred(alpha: np.ndarray, radius: float) -> np.ndarray:
    if radius == 0:
        return alpha
    image = Image.fromarray(np.rint(alpha * 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64) / 255
