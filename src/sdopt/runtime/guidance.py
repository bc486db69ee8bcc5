"""Truncated classifier-free guidance: guidance for the first part of the steps, then the conditional pass alone.

Guidance doubles the UNet's batch (an unconditional row beside every conditional one). Its
effect is decided early: the late steps refine detail the early ones laid out, and dropping the
unconditional rows there changes the image little while saving half of those steps' UNet work —
SD.Next's "CFG end", Diffusers' "dynamic classifier-free guidance" callback. It changes the
computation, so it is a lever judged by adherence on the shapes model (docs/optimize.md), off
(1.0) unless a request or the artifact's default (``export.guidance_end``) asks.

``guidance_end`` is the fraction of the steps that run guided: step i is guided while
i / steps < guidance_end, so 0.5 of 4 steps guides steps 0 and 1, and any value above 0 guides
at least the first step.
"""

from __future__ import annotations

import math
from typing import Any

OFF = 1.0  # every step guided


def guided_steps(steps: int, guidance_end: float) -> int:
    """How many of the first ``steps`` steps run with guidance."""
    return min(steps, math.ceil(guidance_end * steps - 1e-9))


def conditional_half(arrays: dict[str, Any], images: int) -> dict[str, Any]:
    """The conditional rows of guided inputs (rows are [unconditional; conditional]); arrays of another batch unchanged."""
    return {k: (v[images:] if getattr(v, "ndim", 0) and v.shape[0] == 2 * images else v) for k, v in arrays.items()}

