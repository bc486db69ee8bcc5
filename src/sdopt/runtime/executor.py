"""The Component executor contract shared by every backend.

An executor runs one component (text_encoder, unet, vae_decoder, vae_encoder)
on one backend: it takes numpy arrays by input name and returns numpy arrays
by output name. Floating inputs and outputs are float32 whatever precision
runs inside, so the pipeline and the schedulers never see a backend's dtype.

Input and output names follow Hugging Face Optimum's ONNX diffusion export, so
that folders exported by Optimum run unchanged:

    text_encoder  input_ids (B, 77) int64            -> last_hidden_state (B, 77, D), pooler_output (B, D)
    unet          sample (B, C, h, w), timestep () float32,
                  encoder_hidden_states (B, 77, D)   -> out_sample (B, C, h, w)
    vae_decoder   latent_sample (B, C, h, w)         -> sample (B, 3, H, W)
    vae_encoder   sample (B, 3, H, W)                -> latent_parameters (B, 2C, h, w)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Component(Protocol):
    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...


def to_rank(array: np.ndarray, rank: int | None) -> np.ndarray:
    """Fit an input to the rank its graph declares (part of the contract: the loop passes one
    timestep for the whole batch as a scalar; graphs exported elsewhere may take it as (B,), and
    graphs that take () may be given a (1,)). Other inputs already have the graph's rank."""
    if rank is None or array.ndim == rank:
        return array
    return array.reshape(-1)[:1].reshape(()) if rank == 0 else np.ascontiguousarray(np.broadcast_to(array, (1,) * rank))


def close_all(components: dict[str, object]) -> None:
    for comp in components.values():
        close = getattr(comp, "close", None)
        if close is not None:
            close()
