"""GenerateRequest and GenerateResult: the interface shared by the CLI, the server and the bench.

Plain dataclasses with no heavy imports, so that ``import sdopt`` stays lean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdopt.errors import SdoptError

# Bounds on the image side. 8 is the VAE's downsampling factor for every SD-1/2/XL model.
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8


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
        """Raise SdoptError on any field a pipeline cannot run; return self."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
                raise SdoptError(
                    f"{name}={value!r}: must be a multiple of {SIDE_MULTIPLE} between "
                    f"{MIN_SIDE} and {MAX_SIDE} (for example 512)"
                )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise SdoptError(f"steps={self.steps!r}: must be an integer of at least 1")
        if self.guidance_scale < 0:
            raise SdoptError(f"guidance_scale={self.guidance_scale!r}: must be 0 or more (7.5 is usual)")
        if not isinstance(self.num_images, int) or self.num_images < 1:
            raise SdoptError(f"num_images={self.num_images!r}: must be at least 1")
        if not self.prompts:
            raise SdoptError("the prompt list is empty: give at least one prompt")
        if len(self.negative_prompts) != len(self.prompts):
            raise SdoptError(
                f"{len(self.negative_prompts)} negative prompts for {len(self.prompts)} prompts: "
                "give one negative prompt, or one per prompt"
            )
        if self.seed < 0 or self.seed >= 2**63:
            raise SdoptError(f"seed={self.seed}: must be between 0 and 2**63-1")
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
