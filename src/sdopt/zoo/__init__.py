"""Synthetic checkpoints: real Stable Diffusion architectures with deterministic random weights.

They let every exporter, backend and benchmark run with no network and no
licensed weights. Importing this package is cheap (the CLI lists ``MODELS`` at
startup); torch and friends are imported only by ``write_model``.
"""

from __future__ import annotations

from pathlib import Path

from sdopt.errors import SdoptError
from sdopt.zoo.configs import MODELS, ZooModel

__all__ = ["MODELS", "ZooModel", "write_model"]


def write_model(name: str, out: str | Path, seed: int = 0, progress: bool = True, force: bool = False) -> Path:
    """Write zoo model ``name`` to ``out`` as a Diffusers StableDiffusionPipeline folder.

    The same ``seed`` gives byte-identical files. The folder appears only once
    complete: it is written to a hidden sibling and renamed into place, and
    nothing is left behind on failure. ``out`` must not exist or be an empty
    folder. Progress goes to stderr when ``progress`` is true. Returns ``out``
    as an absolute path.
    """
    if name not in MODELS:
        raise SdoptError(f"unknown zoo model {name!r}; known models: {', '.join(MODELS)}")
    if MODELS[name].trained and seed != 0:
        # The shipped weights are copied whatever the seed, yet the manifest would record it (inspect: "seed 5").
        raise SdoptError(f"{name} installs the trained weights sdopt ships, which no seed changes: leave out --seed, "
                         f"or train your own with `sdopt train-shapes OUT --seed {seed}`")
    from sdopt.zoo.writer import write

    return write(MODELS[name], Path(out), seed=seed, progress=progress, force=force)
