"""Parity of an exported component against PyTorch: one comparison, used by every exporter."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdopt.errors import SdoptError

SKIP_ADVICE = "Pass --skip-validation to keep the export anyway (recorded in the manifest)"


class ParityFailure(SdoptError):
    """A component past its parity tolerance. ``summary``: by how much, without the advice, which is the export
    command's flag: a build from a bench profile or by sdopt optimize says what applies there (bench/build.py)."""

    def __init__(self, summary: str, cause: str = ""):
        super().__init__(f"{summary}. {SKIP_ADVICE}{cause}")
        self.summary = summary + cause


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: float) -> dict[str, Any]:
    """Worst output's max abs error, and that error relative to the output's largest magnitude.

    The relative form is what the tolerance bounds: outputs differ in scale
    (a UNet's noise vs a text encoder's hidden states), so one absolute
    number cannot serve every component and model size.
    """
    max_abs = max_rel = 0.0
    finite = True
    for name, ref in reference.items():
        out = got[name].astype(np.float64)
        finite = finite and bool(np.isfinite(out).all())
        diff = float(np.abs(ref.astype(np.float64) - out).max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(np.abs(ref).max()), 1e-12))
    if not finite:  # NaN or inf in the output: no error figure means anything (and JSON has no inf)
        return {"max_abs": None, "max_rel": None, "tolerance": tolerance, "passed": False, "finite": False}
    return {"max_abs": max_abs, "max_rel": max_rel, "tolerance": tolerance, "passed": max_rel <= tolerance, "finite": True}


def settle(name: str, parity: dict[str, Any], precision: str, keep: bool, notes: list[str], cause: str = "") -> None:
    """A component's parity decides the export: passed, it goes on; failed, an SdoptError — unless ``keep``
    (--skip-validation), which keeps the export with the failure recorded (``accepted``) and said in a note.
    ``cause``: what the failure may come from (OpenVINO running bf16 where fp16 was asked)."""
    if parity["passed"]:
        return
    if not keep:
        raise ParityFailure(f"{name}: {describe_failure(parity, precision)}", cause)
    parity["accepted"] = "--skip-validation"
    notes.append(f"{name}: {describe_failure(parity, precision)}; kept (--skip-validation){cause}")


def describe_failure(parity: dict[str, Any], precision: str) -> str:
    what = (
        "the exported graph gives NaN or inf"
        if not parity.get("finite", True)
        else f"the exported graph differs from PyTorch by {parity['max_rel']:.3g} relative to the output's largest value"
    )
    return f"{what}, over the {precision} tolerance {parity['tolerance']:.3g}"
