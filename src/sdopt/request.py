"""GenerateRequest and GenerateResult: the interface shared by the CLI, the Python API and the bench.

Plain dataclasses with no heavy imports, so that ``import sdopt`` stays lean.
"""

from __future__ import annotations

import inspect
import math
import numbers
import sys
from dataclasses import dataclass, field
from typing import Any

from sdopt.errors import SdoptError, argument, did_you_mean, no_value
from sdopt.input_images import open_image

# Bounds on the image side. 8 is the VAE's downsampling factor for every SD-1/2/XL model.
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8
# SD's schedulers are trained on 1000 timesteps: more steps than that repeat timesteps or fail.
MAX_STEPS = 1000
# Far above any useful classifier-free guidance (7.5 is usual, AUTOMATIC1111's slider stops at 30);
# beyond it the guided noise overflows and the image comes out black.
MAX_GUIDANCE = 50.0
MAX_IMAGES = 64  # images in one generate call (prompts x num_images)
MAX_SEED = 2**63 - 1
# AUTOMATIC1111's Clip skip slider stops at 12, SD 1.x's layer count; the artifact's own count is checked at generate.
MAX_CLIP_SKIP = 12
MASKED_CONTENT = ("original", "noise", "zeros")  # GenerateRequest.masked_content
# sdopt's own steps and guidance scale: a request's field defaults, and what a model that says nothing of its own
# gets where a caller asks for the model's (sdopt.runtime.request_defaults).
DEFAULT_STEPS, DEFAULT_GUIDANCE = 20, 7.5


def _check_convertible(image: Any, name: str, mode: str) -> None:
    """An image the loop can read: PIL converts it to ``mode`` (RGB for an init image, L for a mask). Tried on one
    pixel of its mode, so the check costs nothing; a LAB mask, say, has no conversion to L."""
    from PIL import Image

    try:
        Image.new(image.mode, (1, 1)).convert(mode)
    except ValueError:
        raise SdoptError(f"{name}: a {image.mode} image cannot be read as {'a picture' if mode == 'RGB' else 'a mask'} "
                         f"(PIL has no conversion to {mode}): give an RGB or grayscale image", field=name) from None


def check_strength_has_image(strength: float | None, init_image: Any) -> None:
    """--strength without --init-image would be taken and do nothing: refused (sdopt generate, bench, optimize)."""
    if strength is not None and init_image is None:
        raise SdoptError("--strength is how much of --init-image is repainted: give --init-image IMAGE with it (text-to-image takes no strength)")


def image_options(init_image: str | None, mask_image: str | None, strength: float | None) -> dict[str, Any]:
    """GenerateRequest's image fields from file paths (a bench's --init-image/--mask/--strength), the files
    read now; errors name the option."""
    check_strength_has_image(strength, init_image)
    options: dict[str, Any] = {"init_image": open_image(init_image, "--init-image"), "mask_image": open_image(mask_image, "--mask")}
    if strength is not None:
        options["strength"] = strength
    return {k: v for k, v in options.items() if v is not None}


def _plain(value: Any, kind: type, cast: type) -> Any:
    """A numpy scalar of ``kind`` as the Python ``cast``; everything else (bools included) unchanged."""
    if isinstance(value, kind) and not isinstance(value, (bool, cast)) and type(value).__module__ == "numpy":
        return cast(value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real number, not a bool, nan or infinity (what JSON, TOML and Python callers can hand in)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_valid_steps(value: Any, most: int = MAX_STEPS) -> bool:
    """A step count sdopt runs: an integer from 1 to ``most`` (a server's --max-steps, or MAX_STEPS)."""
    return _is_int(value) and 1 <= value <= most


def is_valid_guidance(value: Any) -> bool:
    """A classifier-free guidance scale sdopt runs: a finite number from 0 to MAX_GUIDANCE (1 or less: unguided)."""
    return is_finite_number(value) and 0 <= value <= MAX_GUIDANCE


def _is_pil_image(value: Any) -> bool:
    # A PIL image exists only once PIL.Image is imported, so this never imports it (`import sdopt` stays lean).
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class _Required:
    """The default of a field a request must be given (GenerateRequest.prompt): a missing one is an SdoptError at
    construction, where the generated __init__ raised Python's TypeError. A default, not a check in __new__: copy and
    pickle call ``cls.__new__(cls)`` with no arguments."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


class _DefaultStrength(float):
    """GenerateRequest.strength when not given: 0.8 to every reader, but told from a strength the caller gave, which
    validate refuses without an image to repaint. Its own type, not one object, so copies and pickles keep it."""


DEFAULT_STRENGTH: float = _DefaultStrength(0.8)


def _describe_image(value: Any) -> Any:
    """What to_dict records of an image: its size and mode, not its pixels."""
    if isinstance(value, (list, tuple)):
        return [_describe_image(v) for v in value]
    if _is_pil_image(value):
        return {"size": list(value.size), "mode": value.mode}
    return None if value is None else repr(value)[:80]


@dataclass
class GenerateRequest:
    """What to generate: ``pipeline.generate(GenerateRequest(prompt="a red fox", seed=7))`` on a pipeline from
    ``sdopt.load``. Only ``prompt`` is required; steps and guidance_scale not given are sdopt's 20 and 7.5 on every
    model (``pipeline.request_defaults`` holds the model's own), height and width the model's size. Each field's
    meaning is in a comment where it is declared, below; a field a pipeline cannot run is an SdoptError naming it."""

    prompt: str | list[str] = _REQUIRED
    negative_prompt: str | list[str] | None = None
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    # The image's size, multiples of 8. None: the pipeline's choice, as Diffusers': an init image's own size (down to
    # multiples of 8), else the size the model was trained at (512 for SD 1.5, 1024 for SDXL; a static artifact's shapes).
    height: int | None = None
    width: int | None = None
    num_images: int = 1
    scheduler: str | None = None  # None: the scheduler the checkpoint ships with
    # img2img: start from this PIL image (one for every prompt, or a list with one per prompt),
    # resized to height x width; strength (0, 1] is how much of the schedule runs on it (given without an image: refused).
    init_image: Any = None
    strength: float = DEFAULT_STRENGTH
    # img2img from latents instead of an image (Diffusers' img2img given 4-channel latents as its image; AUTOMATIC1111's
    # hires fix with a "Latent" upscaler): a float32 numpy array (rows, C, height/8, width/8), already scaled by the VAE's
    # scaling factor as GenerateResult.latents are, one row for every prompt or one per prompt; noised to where strength
    # starts the schedule, no VAE encoder needed. Not with init_image or mask_image.
    init_latents: Any = None
    # Inpainting: a PIL image the init image's size, white where to repaint (as in Diffusers).
    mask_image: Any = None
    # Inpainting: what the loop starts from under the mask (AUTOMATIC1111's "Masked content"): "original", the init
    # image's latents as Diffusers does; "noise" (its "latent noise"), the start's own noise there; "zeros" (its
    # "latent nothing"). It changes the start only below strength 1 (at 1 every start is pure noise, as in Diffusers).
    masked_content: str = "original"
    # One seed per image (prompt-major, batch_size of them): each image draws from its own generator,
    # so it is the same alone or batched with others. None: `seed` draws for the whole batch.
    seeds: list[int] | None = None
    # Step-feature caching (sdopt.stepcache): run the whole UNet every N-th step and only its shallow
    # branch between. None: the artifact's default (set at export with --deep-cache; 1 = off).
    cache_interval: int | None = None
    # Truncated guidance (sdopt.runtime.guidance): the fraction (0, 1] of the steps that run classifier-free
    # guidance; the later ones run the conditional pass alone, at half the UNet's batch. None: the
    # artifact's default (export.guidance_end; 1.0, every step, unless sdopt optimize chose less).
    guidance_end: float | None = None
    # The fresh noise DDIM and TCD add at each step (DDIM's eta, TCD's gamma), 0 to 1; read only by schedulers
    # whose step takes it, as in Diffusers. None: 0.0, Diffusers' pipelines' default (deterministic DDIM; TCD's
    # authors suggest 0.3).
    eta: float | None = None
    # AUTOMATIC1111's prompt emphasis, (word:1.2) and the like (sdopt.runtime.emphasis): its API turns it on, as
    # AUTOMATIC1111 reads every prompt so. Off: prompts are plain text, as in Diffusers.
    prompt_emphasis: bool = False
    # AUTOMATIC1111's Clip skip: the prompt is read from the text encoder's last layer but clip_skip - 1, through its
    # final layer norm (1: the last layer, as Diffusers; 2: the penultimate, what many SD 1.5 fine-tunes were trained
    # on; Diffusers' clip_skip is this minus 1). SD 1.x/2.x; an artifact exported before sdopt read it must be exported again.
    clip_skip: int = 1
    # LoRAs applied for this request (torch backend): {path of a .safetensors LoRA: scale}. Each file is
    # loaded once per pipeline; other backends take LoRAs fused at export (sdopt export --lora).
    loras: dict[str, float] | None = None

    def __new__(cls, *args: Any, **kwargs: Any):
        # A misspelt field (stpes=2), too many positional arguments or one given twice were Python's TypeError from the
        # generated __init__: an SdoptError naming it, as every other wrong argument is. Runs before that __init__, which
        # then takes the same arguments. (A missing prompt: __post_init__; copy and pickle call __new__ with none.)
        names = list(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise SdoptError(f"GenerateRequest has no field {unknown[0]!r}{did_you_mean(unknown[0], names)}"
                             f"; its fields: {', '.join(names)}", field=unknown[0])
        twice = [name for name in names[:len(args)] if name in kwargs]
        if len(args) > len(names) or twice:
            said = f"{twice[0]} given twice, by position and by name" if twice else f"{len(args)} fields given by position, of {len(names)}"
            raise SdoptError(f"GenerateRequest: {said}: give the fields by name, GenerateRequest(prompt='a red fox', steps=20, ...)",
                             field=twice[0] if twice else None)
        return super().__new__(cls)

    def __post_init__(self):
        if self.prompt is _REQUIRED:
            raise SdoptError("GenerateRequest needs a prompt: GenerateRequest(prompt='a red fox', ...)", field="prompt")
        # numpy's integers and floats (np.random's seeds, np.float32 scales) as Python's, so they validate and
        # serialise like them; anything else is left for validate() to refuse.
        for name in ("seed", "steps", "height", "width", "num_images", "cache_interval", "clip_skip"):
            setattr(self, name, _plain(getattr(self, name), numbers.Integral, int))
        for name in ("guidance_scale", "strength", "guidance_end", "eta"):
            setattr(self, name, _plain(getattr(self, name), numbers.Real, float))
        if isinstance(self.seeds, (list, tuple)) or type(self.seeds).__name__ == "ndarray":
            self.seeds = [_plain(s, numbers.Integral, int) for s in self.seeds]

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def negative_prompts(self) -> list[str]:
        neg = self.negative_prompt
        if neg is None:
            return [""] * len(self.prompts)
        neg = [neg] if isinstance(neg, str) else list(neg)
        if len(neg) == 1:
            neg = neg * len(self.prompts)
        return neg

    @property
    def init_images(self) -> list:
        return _as_list(self.init_image)

    @property
    def image_to_image(self) -> bool:
        """Whether the loop starts from a picture (init_image, or init_latents): img2img or inpainting, at ``strength``."""
        return self.init_image is not None or self.init_latents is not None

    @property
    def mask_images(self) -> list:
        return _as_list(self.mask_image)

    @property
    def batch_size(self) -> int:
        return len(self.prompts) * self.num_images

    @property
    def uses_guidance(self) -> bool:
        # Same rule as Diffusers: guidance at or below 1 means no unconditional pass.
        return self.guidance_scale > 1.0

    def validate(self) -> "GenerateRequest":
        """Raise SdoptError on any field a pipeline cannot run; return self.

        The one validator of request values, shared by the CLI, the Python API,
        the bench and (through them) every front end: types first, so no bad
        value reaches arithmetic as a TypeError; then finite numbers in range.
        """
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            items = [value] if isinstance(value, str) else value
            if value is None and name == "negative_prompt":
                continue
            if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
                raise SdoptError(f"{name}={value!r}: must be a string or a list of strings")
        for name, low, high, example in (("seed", 0, MAX_SEED, "42"), ("steps", 1, MAX_STEPS, "20"), ("num_images", 1, MAX_IMAGES, "1")):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= high:
                raise SdoptError(f"{argument(name, value)}: must be an integer from {low} to {high} (for example {example})", field=name)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is None:  # the pipeline's choice (Pipeline.sized)
                continue
            if not _is_int(value) or value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
                raise SdoptError(
                    f"{argument(name, value)}: must be a multiple of {SIDE_MULTIPLE} between "
                    f"{MIN_SIDE} and {MAX_SIDE} (for example 512)", field=name
                )
        g = self.guidance_scale
        if not is_valid_guidance(g):
            raise SdoptError(f"{argument('guidance_scale', g, '--guidance')}: must be a finite number from 0 to {MAX_GUIDANCE:g} (7.5 is usual; "
                             "1 or less turns guidance off)", field="guidance_scale")
        ci = self.cache_interval
        if ci is not None and (not _is_int(ci) or not 1 <= ci <= MAX_STEPS):
            raise SdoptError(f"{argument('cache_interval', ci)}: must be an integer from 1 (no caching) to {MAX_STEPS}, or {no_value()} (the artifact's default)",
                             field="cache_interval")
        end = self.guidance_end
        if end is not None and not (is_finite_number(end) and 0 < end <= 1):
            raise SdoptError(f"{argument('guidance_end', end)}: must be a number in (0, 1], the fraction of the steps that run guided (1: all), "
                             f"or {no_value()} (the artifact's default)", field="guidance_end")
        eta = self.eta
        if eta is not None and not (is_finite_number(eta) and 0 <= eta <= 1):
            raise SdoptError(f"{argument('eta', eta)}: must be a number from 0 to 1, the fresh noise DDIM and TCD add at each step (0: none), or {no_value()} (0)",
                             field="eta")
        if not _is_int(self.clip_skip) or not 1 <= self.clip_skip <= MAX_CLIP_SKIP:
            raise SdoptError(f"{argument('clip_skip', self.clip_skip)}: must be an integer from 1 (the text encoder's last layer) to "
                             f"{MAX_CLIP_SKIP}, AUTOMATIC1111's Clip skip (2: the penultimate layer)", field="clip_skip")
        if self.masked_content not in MASKED_CONTENT:
            raise SdoptError(f"masked_content={self.masked_content!r}: one of {', '.join(MASKED_CONTENT)} (what inpainting starts from under the mask)")
        if self.masked_content != "original" and self.mask_image is None:
            raise SdoptError(f"{argument('masked_content', self.masked_content)} is what inpainting starts from under the mask: "
                             f"give {_mask_name()} with it", field="masked_content")
        if not isinstance(self.prompt_emphasis, bool):
            raise SdoptError(f"prompt_emphasis={self.prompt_emphasis!r}: must be true or false")
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise SdoptError(f"scheduler={self.scheduler!r}: must be a scheduler name or None")
        if not self.prompts:
            raise SdoptError("the prompt list is empty: give at least one prompt")
        if len(self.negative_prompts) != len(self.prompts):
            raise SdoptError(
                f"{len(self.negative_prompts)} negative prompts for {len(self.prompts)} prompts: "
                "give one negative prompt, or one per prompt"
            )
        if self.batch_size > MAX_IMAGES:
            raise SdoptError(f"{len(self.prompts)} prompts x {self.num_images} images = {self.batch_size} images in one call: at most {MAX_IMAGES}")
        self._validate_seeds()
        self._validate_images()
        if self.loras is not None:
            if not isinstance(self.loras, dict) or not all(isinstance(k, str) and is_finite_number(v) for k, v in self.loras.items()):
                raise SdoptError(f"loras={self.loras!r}: must map LoRA file paths to scales, e.g. {{'style.safetensors': 0.8}}")
            from sdopt.lora import parse_loras

            parse_loras(self.loras)  # each file exists, is safetensors, and its scale is in range
        return self

    def _validate_seeds(self) -> None:
        if self.seeds is None:
            return
        seeds = self.seeds
        if not isinstance(seeds, (list, tuple)) or not all(_is_int(s) and 0 <= s <= MAX_SEED for s in seeds):
            raise SdoptError(f"seeds={seeds!r}: must be a list of integers from 0 to {MAX_SEED}, one per image (or None)")
        if len(seeds) != self.batch_size:
            raise SdoptError(
                f"seeds has {len(seeds)} entries for {self.batch_size} images ({len(self.prompts)} prompts x "
                f"{self.num_images}): give one seed per image, prompt-major, or none (then seed draws for the whole batch)"
            )

    def _validate_images(self) -> None:
        s = self.strength
        if not is_finite_number(s) or not 0 < s <= 1:
            raise SdoptError(f"{argument('strength', s)}: must be a finite number in (0, 1] (0.8 is usual; 1 repaints the image entirely)")
        for name in ("init_image", "mask_image"):
            items = _as_list(getattr(self, name))
            if getattr(self, name) is not None and (not items or not all(_is_pil_image(i) for i in items)):
                raise SdoptError(f"{name}: must be a PIL image (or a list of them, one per prompt), not {type(getattr(self, name)).__name__}")
            if len(items) not in (0, 1, len(self.prompts)):
                raise SdoptError(f"{name}: {len(items)} images for {len(self.prompts)} prompts: give one image, or one per prompt")
            for image in items:
                if min(image.size) < 1:
                    raise SdoptError(f"{name}: the image is empty ({image.size[0]}x{image.size[1]} pixels)")
                _check_convertible(image, name, "RGB" if name == "init_image" else "L")
        if not self.image_to_image and not isinstance(s, _DefaultStrength):
            raise SdoptError(f"{argument('strength', s)} is how much of the init image is repainted: give {argument('init_image')} (or "
                             f"init_latents) with it, or no {argument('strength')} for text-to-image", field="strength")
        images, masks = self.init_images, self.mask_images
        self._validate_latents()
        if masks and not images:
            raise SdoptError(f"{_mask_name()} needs {argument('init_image')}: the mask says which part of the init image to repaint (white = repaint)",
                             field="init_image")
        if self.image_to_image and self.scheduler not in (None, "lcm", "tcd"):  # those: the scheduler's (schedulers.check_steps)
            check_strength_steps(self.steps, s)
        pairs = zip(images, masks) if len(images) == len(masks) else [(i, m) for i in images for m in masks]
        for image, mask in pairs:
            if image.size != mask.size:
                raise SdoptError(
                    f"{_mask_name()} is {mask.size[0]}x{mask.size[1]} but {argument('init_image')} is {image.size[0]}x{image.size[1]}: "
                    "give a mask of the image's size (white = repaint, black = keep)"
                )

    def _validate_latents(self) -> None:
        latents = self.init_latents
        if latents is None:
            return
        if type(latents).__name__ != "ndarray" or latents.ndim != 4 or latents.dtype.kind != "f":
            what = type(latents).__name__ + (f" of shape {tuple(latents.shape)}" if hasattr(latents, "shape") else "")
            what += f" and dtype {latents.dtype}" if hasattr(latents, "dtype") else ""
            raise SdoptError(f"init_latents: must be a float numpy array (rows, channels, height/8, width/8), as GenerateResult.latents, "
                             f"not a {what}" + (" (torch: pass tensor.numpy())" if type(latents).__name__ == "Tensor" else ""), field="init_latents")
        if self.init_image is not None or self.mask_image is not None:
            raise SdoptError("init_latents is an img2img start of its own: give it or init_image, not both, and no mask_image", field="init_latents")
        if latents.shape[0] not in (1, len(self.prompts), self.batch_size):
            raise SdoptError(f"init_latents has {latents.shape[0]} rows for {len(self.prompts)} prompt(s) x {self.num_images} image(s): give one "
                             "row, one per prompt, or one per image (a result's latents)", field="init_latents")
        if latents.size == 0 or not all(map(is_finite_number, (float(latents.min()), float(latents.max())))):
            raise SdoptError("init_latents is empty or holds NaN or infinite values", field="init_latents")

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data; images are recorded by size and mode, not pixels, latents by shape."""
        from dataclasses import asdict, replace

        data = asdict(replace(self, init_image=None, mask_image=None, init_latents=None))
        data["init_latents"] = None if self.init_latents is None else {"shape": list(self.init_latents.shape)}
        data["init_image"] = _describe_image(self.init_image)
        data["mask_image"] = _describe_image(self.mask_image)
        return data


# __new__ takes (*args, **kwargs) to name a wrong argument itself: help() and editors read the fields from __init__.
_init = inspect.signature(GenerateRequest.__init__)
GenerateRequest.__signature__ = _init.replace(parameters=list(_init.parameters.values())[1:])


@dataclass
class StageTimings:
    """Seconds spent per stage of one generate call."""

    text_encoder: float = 0.0
    vae_encoder: float = 0.0  # img2img and inpainting only: the init image to latents
    # Every UNet call's time, whole or shallow: one per step for most samplers, but PLMS (Diffusers' PNDM, SD 1.x's own)
    # makes one more (21 for 20 steps) and Heun about twice as many (Pipeline.unet_calls says how many, beforehand).
    unet_steps: list[float] = field(default_factory=list)
    shallow_steps: int = 0  # of those, how many ran only the shallow branch (step-feature caching)
    unguided_steps: int = 0  # of those, how many ran the conditional rows alone (truncated guidance)
    vae_decoder: float = 0.0
    total: float = 0.0

    @property
    def unet_total(self) -> float:
        return sum(self.unet_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text_encoder_s": self.text_encoder,
            "vae_encoder_s": self.vae_encoder,
            "unet_steps_s": list(self.unet_steps),
            "unet_total_s": self.unet_total,
            "unet_shallow_steps": self.shallow_steps,
            "unet_unguided_steps": self.unguided_steps,
            "vae_decoder_s": self.vae_decoder,
            "total_s": self.total,
        }


@dataclass
class GenerateResult:
    """What ``pipeline.generate`` (on a pipeline from ``sdopt.load``) returns: the images (PIL, carrying their
    generation parameters), the final latents, per-stage timings and peak memory, and ``problems`` (why an image is not
    usable: NaN, all black) and ``warnings`` (what the loop changed or did not use of the request), this call's alone."""

    images: list  # PIL.Image.Image, one per prompt × num_images, prompt-major
    latents: Any  # numpy float32 array (batch, 4, h/8, w/8): the final latents before decoding
    timings: StageTimings
    # Peaks during this call, in bytes: "rss" (the process's resident set; always) and,
    # on CUDA, "cuda_allocated" (the torch allocator's peak).
    memory: dict[str, int]
    request: GenerateRequest | None = None
    # Why the output is not a usable image (NaN latents, an all-black image), empty when it is:
    # such a result is reported, never passed off as a success (the CLI saves nothing, the bench fails the row).
    problems: list[str] = field(default_factory=list)
    # The same, by image: index in ``images`` -> why it is broken (a server fails only the jobs whose images these are).
    broken_images: dict[int, str] = field(default_factory=dict)
    # What the loop had to change in the request, e.g. prompts cut to the text encoder's length.
    warnings: list[str] = field(default_factory=list)

    @property
    def peak_memory_kind(self) -> str:
        return "cuda_allocated" if "cuda_allocated" in self.memory else "rss"

    @property
    def peak_memory_bytes(self) -> int:
        return self.memory[self.peak_memory_kind]

    def summary(self) -> str:
        t = self.timings
        per_step = t.unet_total / len(t.unet_steps) if t.unet_steps else 0.0
        encode = f"VAE encode {t.vae_encoder * 1000:.0f} ms, " if t.vae_encoder else ""
        # The calls that were not whole guided ones, so "N calls x M ms" reads right: a shallow or unguided call is cheaper.
        lighter = [f"{t.shallow_steps} shallow: step-feature caching" if t.shallow_steps else "",
                   f"{t.unguided_steps} unguided: guidance ended early" if t.unguided_steps else ""]
        cached = f" ({'; '.join(x for x in lighter if x)})" if any(lighter) else ""
        # 0 where the platform gives no peak (sdopt.runtime.memory: Windows): "peak memory 0 MiB" read as a measurement.
        memory = (f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB ({self.peak_memory_kind})" if self.peak_memory_bytes
                  else "peak memory not measured on this platform")
        return (
            f"{len(self.images)} image(s) in {t.total:.2f}s: text encoder {t.text_encoder * 1000:.0f} ms, {encode}"
            f"UNet {len(t.unet_steps)} calls{cached} × {per_step * 1000:.0f} ms, VAE decode {t.vae_decoder * 1000:.0f} ms; {memory}"
        )


def _mask_name() -> str:
    """How a message names the mask: --mask on the command line, mask_image in Python."""
    return argument("mask_image", flag="--mask")


def check_strength_steps(steps: int, strength: float) -> None:
    """img2img keeps the last int(steps x strength) steps of an ordinary sampler's schedule: refused where that is none."""
    if int(steps * strength) < 1:
        raise SdoptError(f"{argument('strength', strength)} with {argument('steps', steps)} runs no step (int(steps x strength) = 0): "
                         f"raise {argument('strength')} or {argument('steps')}")
