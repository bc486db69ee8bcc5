"""sdopt: export, quantize, run, benchmark and gate Stable Diffusion-class models.

Importing this package is cheap on purpose: it must not import torch or any
backend library. ``load`` imports the runtime only when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sdopt import _offline, _third_party_logs
from sdopt.errors import SdoptError
from sdopt.request import GenerateRequest, GenerateResult

if TYPE_CHECKING:  # only for the annotation: importing the runtime here would import numpy and more
    from sdopt.runtime.pipeline import Pipeline

__version__ = "0.1.0"

_third_party_logs.install()
_offline.install()

__all__ = ["load", "GenerateRequest", "GenerateResult", "SdoptError", "__version__"]


def load(path: str | os.PathLike, device: str = "cpu", precision: str | None = None, verify: bool = True, **options: Any) -> Pipeline:
    """Load any sdopt artifact (or a plain Diffusers folder, or a hub id) as a ``Pipeline``: ``pipeline.generate(
    GenerateRequest(prompt=...))`` makes images; ``pipeline.close()``, or the end of ``with sdopt.load(...) as pipeline:``,
    releases it.

    device: "cpu", "cuda" or "cuda:N"; OpenVINO's "gpu", "npu", "auto" or "openvino:NAME". precision: None runs the
    artifact's own; the torch backend casts to another (fp32, bf16; fp16 on CUDA), the others run what they were
    exported in. verify=False skips checking each file's sha256 against the manifest.

    options, each taken by the backends named (any other is refused): attention_slicing, vae_tiling, cpu_offload,
    channels_last, compile (True or a torch.compile mode), deep_cache (True or an interval): torch; threads: torch (its
    threads are the process's: the last load that sets them wins, except in a thread that had run torch before it; README,
    "From Python"), ONNX Runtime and OpenVINO; provider: ONNX Runtime;
    reshape, cache_dir: OpenVINO; run_settings (a dict of the backend's own): ONNX Runtime and OpenVINO.

    Raises SdoptError (MissingDependencyError where the backend's library is not installed), naming the argument at
    fault."""
    from sdopt.runtime.load import load as _load

    return _load(path, device=device, precision=precision, verify=verify, **options)
