"""TensorRT optimization profiles: each engine input's min/opt/max shape, computed from the ComponentSpecs.

An engine built with dynamic axes runs only inside the shapes its profile
declares, and runs fastest at ``opt``. The shapes come from the same
``dummy_inputs`` the exporters trace with, so a profile cannot disagree with the
graph about which axes exist or what the fixed ones are. Two rules:

- the UNet and the text encoders see twice the images when guidance is on
  (prompts and negatives in one call, sdopt's loop as Diffusers'), so their
  ``opt`` and ``max`` batch are doubled; their ``min`` stays the unguided batch
  (guidance 1 runs a single half). The VAE sees the images themselves;
- ``static`` collapses min = opt = max at one size: the smallest, fastest
  engine, and the one CUDA graphs can capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.errors import SdoptError
from sdopt.export.spec import ComponentSpec, ShapeProfile, dummy_inputs
from sdopt.request import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

Shape = tuple[int, ...]
# Components that run on the prompts and their negatives together.
GUIDED = ("unet", "unet_shallow", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class InputProfile:
    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``--shapes 512x512,768x768`` -> [(height, width), ...] (height first, as --height/--width)."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        height, sep, width = part.lower().partition("x")
        if not sep or not height.isdigit() or not width.isdigit():
            raise SdoptError(f"--shapes {text}: give sizes as HEIGHTxWIDTH, comma-separated (e.g. 512x512,768x768)")
        sizes.append((int(height), int(width)))
    for h, w in sizes:
        for value in (h, w):
            if value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
                raise SdoptError(f"--shapes {h}x{w}: each side must be a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE}")
    if not sizes:
        raise SdoptError("--shapes is empty: give at least one HEIGHTxWIDTH")
    return sizes


def parse_batch_range(text: str) -> tuple[int, int]:
    """``--batch-range 1:4`` -> (1, 4): images per request."""
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
        raise SdoptError(f"--batch-range {text}: give MIN:MAX images per request, e.g. 1:4 (1 <= MIN <= MAX)")
    return int(low), int(high)


def shape_profile(sizes: list[tuple[int, int]], batch: tuple[int, int], opt_batch: int | None = None) -> ShapeProfile:
    """The min/opt/max of images per request and of each side, over the sizes asked for.
    ``opt`` is the first size given (the one the user cares most about) and the smallest batch, unless said."""
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    opt_b = opt_batch if opt_batch is not None else batch[0]
    return ShapeProfile(batch=(batch[0], opt_b, batch[1]), height=(min(heights), sizes[0][0], max(heights)),
                        width=(min(widths), sizes[0][1], max(widths)))


def static_profile(height: int, width: int, batch: int) -> ShapeProfile:
    return ShapeProfile(batch=(batch, batch, batch), height=(height, height, height), width=(width, width, width))


def input_profiles(spec: ComponentSpec, model: dict[str, Any], shapes: ShapeProfile, guidance: bool = True, static: bool = False) -> dict[str, InputProfile]:
    """Each input of ``spec``'s graph: its (min, opt, max) shape under ``shapes`` (images per request, pixel sides).

    ``guidance``: requests may use classifier-free guidance (the usual case), so the
    guided components' opt and max batch are doubled; min stays one half, for
    requests without guidance. ``static``: one shape, guided when ``guidance``.
    """
    from sdopt.runtime.embedded_guidance import embeds_guidance

    doubled = guidance and spec.name in GUIDED and not embeds_guidance(model)  # an LCM UNet takes guidance as an input instead

    def at(i: int, double: bool) -> dict[str, Shape]:
        inputs = _shapes_of(spec.name, model, shapes.batch[i] * (2 if double else 1), shapes.height[i], shapes.width[i])
        return {name: inputs[name] for name in spec.input_names}

    low, opt, high = (at(1, doubled),) * 3 if static else (at(0, False), at(1, doubled), at(2, doubled))
    return {name: InputProfile(low[name], opt[name], high[name]) for name in spec.input_names}


def _shapes_of(name: str, model: dict[str, Any], batch: int, height: int, width: int) -> dict[str, Shape]:
    """The input shapes the exporters' dummy inputs have at this batch and size (at batch 1, then scaled:
    the largest VAE input at 1024² and batch 8 would be 100 MB of random numbers for a shape)."""
    one = dummy_inputs(name, model, batch=1, height=height, width=width)
    return {k: ((batch, *v.shape[1:]) if v.ndim else ()) for k, v in one.items()}


def profiles_for(specs: dict[str, ComponentSpec], model: dict[str, Any], shapes: ShapeProfile, guidance: bool = True,
                 static: bool = False) -> dict[str, dict[str, InputProfile]]:
    """Every component's input profiles (what the manifest records and the builder declares)."""
    return {name: input_profiles(spec, model, shapes, guidance, static) for name, spec in specs.items()}


def recorded_profile(export: dict[str, Any] | None, component: str, name: str) -> dict[str, list[int]] | None:
    """One engine input's {"min", "opt", "max"} shapes as a TensorRT artifact's manifest records them (export.profiles);
    None without them (another backend, or a manifest from before profiles were recorded)."""
    return (((export or {}).get("profiles") or {}).get(component) or {}).get(name)


def image_ranges(export: dict[str, Any] | None, model: dict[str, Any]) -> dict[str, tuple[int, int, int]] | None:
    """The (min, opt, max) images per call, height and width (pixels) a dynamic TensorRT artifact's engines take, from
    the VAE decoder's recorded profile (it sees the images themselves, never doubled by guidance); None without one
    (another backend, or a manifest from before profiles were recorded). A request outside them cannot run."""
    profile = recorded_profile(export, "vae_decoder", "latent_sample")
    if not profile:
        return None
    factor = int(model.get("vae_scale_factor", 8))
    rows = [profile[k] for k in ("min", "opt", "max")]
    return {"batch": tuple(int(r[0]) for r in rows), "height": tuple(int(r[2]) * factor for r in rows),
            "width": tuple(int(r[3]) * factor for r in rows)}


def describe_ranges(ranges: dict[str, tuple[int, int, int]]) -> str:
    """``image_ranges`` in words: 512..768 x 512..640 px, 1..4 images a call (best at 512x512, 1 image)."""
    def span(low: int, high: int) -> str:
        return str(low) if low == high else f"{low}..{high}"

    (b0, b1, b2), (h0, h1, h2), (w0, w1, w2) = ranges["batch"], ranges["height"], ranges["width"]
    return (f"{span(h0, h2)} x {span(w0, w2)} px (height x width), {span(b0, b2)} image{'s' * (b2 != 1)} a call "
            f"(best at {h1}x{w1}, {b1} image{'s' * (b1 != 1)})")
