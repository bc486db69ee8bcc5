"""GenerateRequest and GenerateResult: the interface shared by the CLI, the Python API and the bench.

Plain dataclasses with no heavy imports, so that ``import sdopt`` stays lean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sdopt.errors import SdoptError

# Bounds on the image side. 8 is the VAE's downsampling factor for every SD-1/2/XL model.
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8
# SD's schedulers are trained on 1000 timesteps: more steps than that repeat timesteps or fail.
MAX_STEPS = 1000
# Far above any useful classifier-free guidance (7.5 is usual, AUTOMATIC1111's slider stops at 30);
# beyond it the guided noise overflows and the image comes out black.
MAX_GUIDANCE = 50.0
MAX_IMAGES = 64  # images in one generate call (prompts x num_images)
MAX_SEED = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class GenerateRequest:
    prompt: str | list[str]
    negative_prompt: str | list[str] | None = None
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    num_images: int = 1
    scheduler: str | None = None  # None: the scheduler the checkpoint ships with

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
                raise SdoptError(f"{name}={value!r}: must be an integer from {low} to {high} (for example {example})")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _is_int(value) or value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
                raise SdoptError(
                    f"{name}={value!r}: must be a multiple of {SIDE_MULTIPLE} between "
                    f"{MIN_SIDE} and {MAX_SIDE} (for example 512)"
                )
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
            raise SdoptError(f"guidance_scale={g!r}: must be a finite number from 0 to {MAX_GUIDANCE:g} (7.5 is usual; 1 or less turns guidance off)")
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
        return self

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class StageTimings:
    """Seconds spent per stage of one generate call."""

    text_encoder: float = 0.0
    unet_steps: list[float] = field(default_factory=list)
    vae_decoder: float = 0.0
    total: float = 0.0

    @property
    def unet_total(self) -> float:
        return sum(self.unet_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text_encoder_s": self.text_encoder,
            "unet_steps_s": list(self.unet_steps),
            "unet_total_s": self.unet_total,
            "vae_decoder_s": self.vae_decoder,
            "total_s": self.total,
        }


@dataclass
class GenerateResult:
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
        return (
            f"{len(self.images)} image(s) in {t.total:.2f}s: text encoder {t.text_encoder * 1000:.0f} ms, "
            f"UNet {len(t.unet_steps)} steps × {per_step * 1000:.0f} ms, VAE decode {t.vae_decoder * 1000:.0f} ms; "
            f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB ({self.peak_memory_kind})"
        )
