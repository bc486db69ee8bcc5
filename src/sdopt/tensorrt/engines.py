"""What a TensorRT engine is tied to, where its timing cache lives, and what a machine must have to build or run one.

A serialized engine runs only on the TensorRT version that built it and on GPUs
of the same compute capability: the manifest records both (``export.tensorrt``),
and loading elsewhere is refused with the way out (``--rebuild``: the engines
built again on that machine from the ONNX graphs the artifact keeps; or export
again). Everything here but ``here()`` imports nothing
heavy, so the refusals are tested on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, require
from sdopt.file_reading import user_cache_dir


def engine_key(tensorrt_version: str, compute_capability: str) -> dict[str, str]:
    """The manifest's record of what the engines need (``export.tensorrt``)."""
    return {"tensorrt_version": tensorrt_version, "compute_capability": compute_capability}


def check_engines(recorded: dict[str, Any] | None, here: dict[str, str], folder: Path, source: str | None = None) -> None:
    """Refuse engines built for another TensorRT version or GPU generation, saying how to rebuild them
    (``source``: the checkpoint the artifact was exported from, as its manifest records it)."""
    if not recorded:
        raise SdoptError(f"{folder}: the manifest does not say which TensorRT version and GPU built its engines; export it again")
    wrong = [
        f"{what} {recorded.get(key)} (this machine: {here[key]})"
        for key, what in (("tensorrt_version", "TensorRT"), ("compute_capability", "GPU compute capability"))
        if str(recorded.get(key)) != str(here[key])
    ]
    if wrong:
        raise SdoptError(
            f"{folder}: its TensorRT engines were built for {' and '.join(wrong)}; engines run only where they were built. "
            f"Build them on this machine from the ONNX graphs it keeps: sdopt export {folder} --to tensorrt --rebuild -o NEW_FOLDER "
            f"(or export again: sdopt export {source or 'CHECKPOINT'} --to tensorrt -o NEW_FOLDER)"
        )


def timing_cache_path(key: dict[str, str]) -> Path:
    """One persisted timing cache per TensorRT version and GPU generation: a rebuild, or the next
    model's build on the same machine, reuses the kernel timings instead of measuring them again
    (a timing cache from another version or GPU is invalid, so it is never shared across them)."""
    return user_cache_dir() / "tensorrt" / f"timing-trt{key['tensorrt_version']}-sm{key['compute_capability'].replace('.', '')}.cache"


def require_gpu() -> str:
    """The CUDA device TensorRT would use, or an error naming what is missing. Asked before any slow work."""
    torch = require("torch", "tensorrt")
    if not torch.cuda.is_available():
        build = "the CPU build of torch is installed (see README: installing the CUDA build)" if torch.version.cuda is None else "torch sees no CUDA device"
        raise SdoptError(f"TensorRT needs an NVIDIA GPU: no CUDA device here ({build})")
    return torch.cuda.get_device_name(0)


def here() -> dict[str, str]:
    """This machine's TensorRT version and GPU compute capability (needs both)."""
    require_gpu()
    trt = require("tensorrt", "tensorrt")
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return engine_key(trt.__version__, f"{major}.{minor}")
