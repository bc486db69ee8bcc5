"""A procedural "shapes" dataset: 64x64 pictures of one or two coloured shapes, with captions.

Each image shows one object ("a red circle on the left") or two ("a red circle on the left
and a blue square on the right") drawn in a named colour at a named position on a light, plain
or lightly textured background. Everything a caption says (colour, shape, position) can be
checked in a picture with classical vision (see ``sdopt.shapes.judge``), so a text-to-image
model trained on these pairs draws *checkable* things: how well it follows its prompt becomes
a number, which is what an optimization (quantization, pruning, distillation) must preserve.

Determinism: everything random takes a ``numpy.random.Generator``; ``samples(seed, n)`` gives
the same pairs for the same seed. Global random state is never used.

Held-out prompts: ``held_out_prompts`` returns captions from a pool chosen once with
``EVAL_SEED`` (10 000), and the training sampler (``sample_scene``, hence ``samples`` and
``captions``) never produces a caption from that pool, whatever its seed. Held out therefore
means held-out *captions* (combinations of colour, shape and position never seen in training),
disjoint by construction, not merely other seeds.

Pure numpy + Pillow: importing this module never imports torch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# Saturated colours, far apart in RGB from each other (closest: yellow/orange 91, red/orange
# 102, blue/purple 110) and from every light background (183 or more), so a
# blurry, colour-shifted picture still classifies. No white, black or gray objects.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (212, 30, 42),
    "green": (34, 158, 58),
    "blue": (34, 72, 218),
    "yellow": (238, 212, 20),
    "purple": (134, 48, 180),
    "orange": (246, 122, 14),
    "cyan": (22, 184, 204),
}

# Only shapes the judge separates at >= 0.95 on ground truth; all are upright and fill a
# square bounding box, so the judge can compare them after normalising that box.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")

POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

# Where each position puts an object's centre, as (x, y) fractions of the image.
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}

# Two-object scenes use one of these pairs, in this order in the caption: with objects at most
# 22 px across and a 3 px jitter, the two never overlap (they are 32 px apart at 64 px).
PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))

_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_PHRASE_TO_POSITION = {phrase: position for position, phrase in _PHRASES.items()}

# Light backgrounds: "<tone>-<texture>".
BACKGROUND_TONES: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 242),
    "gray": (214, 214, 214),
    "beige": (238, 226, 202),
}
TEXTURES: tuple[str, ...] = ("plain", "noise", "gradient")
BACKGROUNDS: tuple[str, ...] = tuple(f"{tone}-{texture}" for tone in BACKGROUND_TONES for texture in TEXTURES)

EVAL_SEED = 10_000  # picks the held-out caption pool; training seeds never matter for it
HELD_OUT_SINGLES = 16  # of the 210 one-object captions
HELD_OUT_PAIRS = 112  # of the 3024 two-object captions
TWO_OBJECT_PROBABILITY = 0.5

IMAGE_SIZE = 64
# Object size (side of its square bounding box) and centre jitter, in pixels at 64 px;
# other image sizes scale them.
MIN_SIDE, MAX_SIDE = 16.0, 22.0
CENTER_JITTER = 3.0
RING_HOLE = 0.5  # inner diameter / outer diameter
CROSS_ARM = 1 / 3  # arm width / side
OBJECT_COLOR_JITTER = 6  # per channel, so the model sees a little colour variety
SUPERSAMPLE = 4  # draw at 4x, box-filter down: antialiased edges


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        _check_choice("color", self.color, tuple(COLORS))
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("position", self.position, POSITIONS)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str = "white-plain"

    def __post_init__(self) -> None:
        _check_objects(self.objects)
        _check_choice("background", self.background, BACKGROUNDS)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _check_objects(objects: tuple[ShapeObject, ...]) -> None:
    """One object, or two with different colours at a non-overlapping pair of positions."""
    if len(objects) not in (1, 2):
        raise ValueError(f"a scene has 1 or 2 objects, got {len(objects)}")
    if len(objects) == 2:
        a, b = objects
        if a.color == b.color:
            # The judge finds objects by colour: two of one colour would be ambiguous.
            raise ValueError(f"the two objects must have different colors, both are {a.color}")
        if tuple(sorted((a.position, b.position), key=POSITIONS.index)) not in PAIRS:
            pairs = ", ".join("+".join(p) for p in PAIRS)
            raise ValueError(f"two objects must be at one of the position pairs {pairs}, got {a.position}+{b.position}")


# --- captions -----------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: ShapeObject) -> str:
    return f"{_article(obj.color)} {obj.color} {obj.shape} {_PHRASES[obj.position]}"


def caption(scene: Scene) -> str:
    """'a red circle on the left', 'a red circle on the left and a blue square on the right'."""
    return " and ".join(_phrase(obj) for obj in scene.objects)


_CLAUSE = re.compile(r"(?:a|an) (?P<color>[a-z]+) (?P<shape>[a-z]+) (?P<phrase>(?:on|at|in) the [a-z]+)")


def parse_caption(text: str) -> tuple[ShapeObject, ...]:
    """The objects a caption names, in its order; ``ValueError`` for text outside the grammar.

    Case, extra spaces and a final period are forgiven; "a"/"an" are interchangeable.
    """
    if not isinstance(text, str):
        raise ValueError(f"a caption is a str, got {type(text).__name__}")
    normal = " ".join(text.lower().strip().rstrip(".").split())
    if not normal:
        raise ValueError("cannot parse an empty caption")
    clauses = normal.split(" and ")
    if len(clauses) > 2:
        raise ValueError(f"cannot parse {text!r}: a caption names at most 2 objects")
    objects = tuple(_parse_clause(clause, text) for clause in clauses)
    try:
        _check_objects(objects)
    except ValueError as e:
        raise ValueError(f"cannot parse {text!r}: {e}") from None
    return objects


def _parse_clause(clause: str, text: str) -> ShapeObject:
    match = _CLAUSE.fullmatch(clause)
    if match is None:
        raise ValueError(
            f"cannot parse {clause!r} in caption {text!r}: expected 'a <color> <shape> <where>' with <where> one of "
            + ", ".join(repr(p) for p in _PHRASES.values())
        )
    position = _PHRASE_TO_POSITION.get(match["phrase"])
    if position is None:
        raise ValueError(f"cannot parse {text!r}: unknown position {match['phrase']!r}; expected one of {', '.join(_PHRASES.values())}")
    try:
        return ShapeObject(match["color"], match["shape"], position)
    except ValueError as e:
        raise ValueError(f"cannot parse {text!r}: {e}") from None


@lru_cache(maxsize=2)
def caption_space(n_objects: int) -> tuple[str, ...]:
    """Every canonical caption with ``n_objects`` objects (1: 210, 2: 3024), in a fixed order."""
    if n_objects == 1:
        combos = itertools.product(COLORS, SHAPES, POSITIONS)
        return tuple(caption(Scene((ShapeObject(c, s, p),))) for c, s, p in combos)
    if n_objects == 2:
        out = []
        for (p1, p2), (c1, c2), s1, s2 in itertools.product(PAIRS, itertools.permutations(COLORS, 2), SHAPES, SHAPES):
            out.append(caption(Scene((ShapeObject(c1, s1, p1), ShapeObject(c2, s2, p2)))))
        return tuple(out)
    raise ValueError(f"n_objects is 1 or 2, got {n_objects}")


# --- held-out captions ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def _held_out_pool() -> tuple[str, ...]:
    """The held-out captions, chosen by EVAL_SEED: one single-object caption every 4 while any remain."""
    rng = np.random.default_rng(EVAL_SEED)
    all_singles, all_pairs = caption_space(1), caption_space(2)
    singles = [all_singles[i] for i in rng.permutation(len(all_singles))[:HELD_OUT_SINGLES]]
    pairs = [all_pairs[i] for i in rng.permutation(len(all_pairs))[:HELD_OUT_PAIRS]]
    pool = []
    while singles or pairs:
        if singles and (len(pool) % 4 == 0 or not pairs):
            pool.append(singles.pop(0))
        else:
            pool.append(pairs.pop(0))
    return tuple(pool)


@lru_cache(maxsize=1)
def _held_out_set() -> frozenset[str]:
    return frozenset(_held_out_pool())


def is_held_out(scene: Scene) -> bool:
    """Whether the scene's caption is reserved for evaluation (never sampled for training)."""
    return caption(_canonical(scene)) in _held_out_set()


def _canonical(scene: Scene) -> Scene:
    objects = tuple(sorted(scene.objects, key=lambda o: POSITIONS.index(o.position)))
    return Scene(objects, scene.background)


def held_out_prompts(n: int = 64) -> list[str]:
    """The first n captions of the held-out pool (fixed by EVAL_SEED; about 1 in 4 names one object)."""
    pool = _held_out_pool()
    if not 1 <= n <= len(pool):
        raise ValueError(f"n must be between 1 and {len(pool)} (the held-out pool), got {n}")
    return list(pool[:n])


def held_out_samples(n: int = 64) -> Iterator[tuple[np.ndarray, str]]:
    """Ground-truth pictures of ``held_out_prompts(n)``, rendered with EVAL_SEED (for calibrating the judge)."""
    rng = np.random.default_rng(EVAL_SEED)
    for text in held_out_prompts(n):
        scene = Scene(parse_caption(text), BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
        yield render(scene, rng), text


# --- sampling -------------------------------------------------------------------------------


def sample_scene(rng: np.random.Generator, *, include_held_out: bool = False) -> Scene:
    """A random training scene; held-out captions are redrawn unless ``include_held_out``."""
    while True:
        scene = _draw_scene(rng)
        if include_held_out or not is_held_out(scene):
            return scene


def _draw_scene(rng: np.random.Generator) -> Scene:
    colors = tuple(COLORS)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if rng.random() < TWO_OBJECT_PROBABILITY:
        positions = PAIRS[rng.integers(len(PAIRS))]
        picked = rng.choice(len(colors), size=2, replace=False)
        shapes = rng.integers(len(SHAPES), size=2)
        objects = tuple(ShapeObject(colors[c], SHAPES[s], p) for c, s, p in zip(picked, shapes, positions))
    else:
        objects = (ShapeObject(colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))], POSITIONS[rng.integers(len(POSITIONS))]),)
    return Scene(objects, background)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Separate streams for scenes and pixels, so captions(seed, n) needs no rendering."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    scene_seq, render_seq = np.random.SeedSequence(int(seed)).spawn(2)
    return np.random.default_rng(scene_seq), np.random.default_rng(render_seq)


def _check_count(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


def samples(seed: int, n: int) -> Iterator[tuple[np.ndarray, str]]:
    """n (uint8 64x64x3 image, caption) training pairs, the same for the same seed."""
    _check_count(n)
    scene_rng, render_rng = _streams(seed)
    for _ in range(n):
        scene = sample_scene(scene_rng)
        yield render(scene, render_rng), caption(scene)


def captions(seed: int, n: int) -> Iterator[str]:
    """The captions of ``samples(seed, n)``, without drawing the pictures."""
    _check_count(n)
    scene_rng, _ = _streams(seed)
    for _ in range(n):
        yield caption(sample_scene(scene_rng))


# --- rendering ------------------------------------------------------------------------------


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as a uint8 size x size x 3 array; size, placement and tones jittered by rng."""
    if size < 32:
        raise ValueError(f"size must be at least 32 px to draw the shapes, got {size}")
    image = _background(scene.background, rng, size)
    scale = size / IMAGE_SIZE
    for obj in scene.objects:
        side = rng.uniform(MIN_SIDE, MAX_SIDE) * scale
        ax, ay = ANCHORS[obj.position]
        cx, cy = np.array([ax, ay]) * size + rng.uniform(-CENTER_JITTER, CENTER_JITTER, size=2) * scale
        alpha = shape_alpha(obj.shape, (cx, cy), side, size)[..., None]
        color = np.array(COLORS[obj.color], float) + rng.integers(-OBJECT_COLOR_JITTER, OBJECT_COLOR_JITTER + 1, size=3)
        image = image * (1 - alpha) + color * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _background(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    tone, texture = name.split("-")
    rgb = np.array(BACKGROUND_TONES[tone], float) + rng.uniform(-4, 4, size=3)
    image = np.broadcast_to(rgb, (size, size, 3)).copy()
    if texture == "noise":
        # Gray grain (same on every channel) keeps the background neutral, so it never looks like a colour.
        image += rng.normal(0, 5, size=(size, size, 1))
    elif texture == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
        image += 24 * (np.cos(angle) * xs + np.sin(angle) * ys)[..., None]
    return image


def shape_alpha(shape: str, center: tuple[float, float], side: float, size: int) -> np.ndarray:
    """Coverage in [0, 1] (size x size float) of ``shape`` with its square bounding box of ``side`` px at ``center``."""
    _check_choice("shape", shape, SHAPES)
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _draw(ImageDraw.Draw(mask), shape, center[0] * SUPERSAMPLE, center[1] * SUPERSAMPLE, side * SUPERSAMPLE / 2)
    return np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float64) / 255


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, h: float) -> None:
    """Fill ``shape`` (half-side h) on a mask; every shape fills the same square bounding box."""
    box = [cx - h, cy - h, cx + h, cy + h]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":  # pointing up: the judge tells it from a diamond by where its mass lies
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=255)
    elif shape == "cross":
        a = h * CROSS_ARM
        draw.rectangle([cx - h, cy - a, cx + h, cy + a], fill=255)
        draw.rectangle([cx - a, cy - h, cx + a, cy + h], fill=255)
    elif shape == "ring":
        r = h * RING_HOLE
        draw.ellipse(box, fill=255)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
    else:  # pragma: no cover - SHAPES and this function must list the same shapes
        raise ValueError(f"no drawing for shape {shape!r}")
