"""The steps and guidance scale a request that does not say gets: the model's own, not one pair for every model.

sdopt's general defaults (20 steps, guidance 7.5) run a few-step model far slower than it needs (an LCM wants 4
steps, SD-Turbo 1) and burn a Turbo model's images (it was distilled to run unguided). Where the defaults come
from, the first that applies:

1. what the artifact records: ``sdopt export`` / ``sdopt quantize --default-steps N --default-guidance G``.
   Nothing in a Turbo checkpoint's files says it is one, so its user says it once, at export;
2. what the model's files say: an LCM-distilled UNet (``time_cond_proj_dim``) gets Diffusers'
   ``LatentConsistencyModelPipeline`` defaults, 4 steps at guidance 8.5;
3. sdopt's: 20 steps at guidance 7.5.

``sdopt generate`` and ``sdopt serve`` (its OpenAI and native APIs and its page) use them where no flag or
field says otherwise; a Python caller reads them from ``Pipeline.request_defaults``. GenerateRequest's own
field defaults stay 20 and 7.5: a request is the same request whatever model it meets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdopt.errors import SdoptError, argument
from sdopt.request import DEFAULT_GUIDANCE as SDOPT_GUIDANCE, DEFAULT_STEPS as SDOPT_STEPS
from sdopt.runtime import embedded_guidance

RECORD = "request_defaults"  # the manifest's export key: {"steps": N, "guidance_scale": G}, either may be absent
LCM_STEPS, LCM_GUIDANCE = 4, 8.5  # diffusers.LatentConsistencyModelPipeline.__call__'s defaults


@dataclass(frozen=True)
class RequestDefaults:
    """The steps and guidance scale a model runs where a request does not say (Pipeline.request_defaults), and why."""

    steps: int
    guidance_scale: float
    source: str  # where they come from, said to the user when they are not sdopt's

    @property
    def is_sdopts(self) -> bool:
        return (self.steps, self.guidance_scale) == (SDOPT_STEPS, SDOPT_GUIDANCE)

    def describe(self) -> str:
        return f"{self.steps} step{'s' if self.steps != 1 else ''} at guidance {self.guidance_scale:g} ({self.source})"


def record(steps: int | None, guidance_scale: float | None) -> dict[str, Any]:
    """The manifest's export fields for ``--default-steps``/``--default-guidance`` (none when neither is given),
    checked against the bounds a request has; the errors name the flags."""
    from sdopt.request import MAX_GUIDANCE, MAX_STEPS, is_valid_guidance, is_valid_steps

    if steps is not None and not is_valid_steps(steps):
        raise SdoptError(f"{argument('default_steps', steps)}: must be an integer from 1 to {MAX_STEPS} (1 for SD-Turbo, 4 for an LCM)")
    if guidance_scale is not None and not is_valid_guidance(guidance_scale):
        raise SdoptError(f"{argument('default_guidance', guidance_scale)}: must be a number from 0 to {MAX_GUIDANCE:g} (0 for a Turbo model: unguided)")
    chosen = {k: v for k, v in (("steps", steps), ("guidance_scale", None if guidance_scale is None else float(guidance_scale))) if v is not None}
    return {RECORD: chosen} if chosen else {}


def request_defaults(model: dict[str, Any], export: dict[str, Any] | None) -> RequestDefaults:
    """The defaults for an artifact with these model facts and export record (Manifest.model, Manifest.export)."""
    if embedded_guidance.embeds_guidance(model):
        steps, guidance, source = LCM_STEPS, LCM_GUIDANCE, "an LCM-distilled UNet: Diffusers' LatentConsistencyModelPipeline defaults"
    else:
        steps, guidance, source = SDOPT_STEPS, SDOPT_GUIDANCE, "sdopt's defaults"
    recorded = (export or {}).get(RECORD) or {}
    if recorded:
        steps, guidance = int(recorded.get("steps", steps)), float(recorded.get("guidance_scale", guidance))
        source = "the artifact's, set when it was made (export or quantize --default-steps/--default-guidance)"
    return RequestDefaults(steps, guidance, source)


def default_size(manifest: Any, built_shapes: dict[str, int] | None = None) -> tuple[int, int]:
    """(height, width) of a request that does not say: ``own_size``, else 512."""
    return own_size(manifest, built_shapes) or (512, 512)


def own_size(manifest: Any, built_shapes: dict[str, int] | None = None) -> tuple[int, int] | None:
    """(height, width) the model makes by itself: the shapes a static artifact was built for (``built_shapes``: those
    its loader lifted, OpenVINO's reshape), else the size it was trained at (UNet sample size x VAE factor, Diffusers'
    pipelines' default: 512 for SD 1.5, 1024 for SDXL, 64 for the tiny and shapes models); None where neither is known."""
    shapes = getattr(manifest, "static_shapes", None) or built_shapes or {}
    if shapes.get("height") and shapes.get("width"):
        return int(shapes["height"]), int(shapes["width"])
    model = getattr(manifest, "model", None) or {}
    if isinstance(model.get("sample_size"), int) and "vae_scale_factor" in model:
        side = int(model["sample_size"]) * int(model["vae_scale_factor"])
        return side, side
    return None


def sized(request: Any, manifest: Any, built_shapes: dict[str, int] | None = None) -> Any:
    """The GenerateRequest with the height and width it left to the pipeline (None) filled in, as Diffusers fills them:
    the shapes a static artifact was built for, the init image's own size down to multiples of 8, the init latents'
    size, else default_size. A size taken from an image or latents that no request can have is refused naming them."""
    import dataclasses

    from sdopt.request import MAX_SIDE, MIN_SIDE, _is_pil_image

    if request.height is not None and request.width is not None:
        return request
    static = getattr(manifest, "static_shapes", None) or built_shapes or {}
    images = request.init_images
    # Only a PIL image gives its size here; anything else (a numpy array's size is an int, a tensor's a method) is left
    # for GenerateRequest.validate to refuse by name.
    image = images[0] if images and _is_pil_image(images[0]) else None
    source = None
    if static.get("height") and static.get("width"):
        height, width = default_size(manifest, built_shapes)  # the only size it runs (an init image is resized)
    elif request.init_latents is not None and getattr(request.init_latents, "ndim", 0) == 4:
        factor = int(manifest.model.get("vae_scale_factor", 8))
        height, width = (int(side) * factor for side in request.init_latents.shape[2:])
        source = f"init_latents of shape {tuple(request.init_latents.shape)}"
    elif image is not None:
        width, height = image.size
        height, width = max(8, height - height % 8), max(8, width - width % 8)
        source = f"the init image ({image.size[0]}x{image.size[1]})"
    else:
        height, width = default_size(manifest)
    height = height if request.height is None else request.height
    width = width if request.width is None else request.width
    if source and not all(MIN_SIDE <= side <= MAX_SIDE for side in (height, width)):
        raise SdoptError(f"{source} makes a {width}x{height} request, which no model runs (sides {MIN_SIDE} to {MAX_SIDE}): "
                         f"give {argument('height')} and {argument('width')}, and the image is resized to them", field="height")
    return dataclasses.replace(request, height=height, width=width)
