"""Scheduler names sdopt accepts, mapped to Diffusers scheduler classes.

Every scheduler is built from the checkpoint's own scheduler config (betas,
timestep spacing, prediction type) with only the overrides below, as the
Diffusers community names them (A1111's sampler names in comments).
"""

from __future__ import annotations

from typing import Any

from sdopt.errors import SdoptError

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),  # "Euler a"
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),  # "DPM++ 2M"
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # "PLMS"
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Latent consistency: the sampler of LCM-distilled UNets and of LCM-LoRAs fused into a checkpoint (2-8 steps,
    # guidance 1-2 for a LoRA). It predicts the clean latents each step and adds fresh noise between (it takes the generator).
    "lcm": ("LCMScheduler", {}),
}


def check_scheduler(name: str | None) -> None:
    if name is not None and name not in SCHEDULERS:
        raise SdoptError(f"unknown scheduler '{name}'; known schedulers: {', '.join(SCHEDULERS)}")


def make_scheduler(name: str | None, config: dict[str, Any]):
    """A fresh scheduler: ``name`` from SCHEDULERS, or the checkpoint's own class when None."""
    import diffusers

    check_scheduler(name)
    if name is None:
        cls_name, overrides = config.get("_class_name", "PNDMScheduler"), {}
    else:
        cls_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise SdoptError(f"the checkpoint's scheduler class {cls_name} is not in this diffusers version")
    if config.get("rescale_betas_zero_snr") and not _accepts(cls, "rescale_betas_zero_snr"):
        # The class would build SD 1.5's noise levels, not the ones the model was trained on, and
        # draw washed-out pictures without a word.
        fits = [name for name, (other, _) in SCHEDULERS.items() if _accepts(getattr(diffusers, other), "rescale_betas_zero_snr")]
        raise SdoptError(
            f"this checkpoint was trained with zero terminal SNR (rescale_betas_zero_snr), which {cls_name} "
            f"cannot schedule; choose one of: {', '.join(fits)} (--scheduler)"
        )
    return cls.from_config(config, **overrides)


def _accepts(cls, option: str) -> bool:
    import inspect

    return option in inspect.signature(cls.__init__).parameters
