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
    return cls.from_config(config, **overrides)
