"""Guidance as an input of the UNet: LCM-distilled UNets (``time_cond_proj_dim`` in their config).

A latent consistency model was distilled with classifier-free guidance folded in: its UNet takes
the guidance scale as an embedding (``timestep_cond``, added to the time embedding) and runs once
per step on the prompt alone — no unconditional rows, no negative prompt. Diffusers'
``LatentConsistencyModelPipeline`` embeds ``w = guidance_scale - 1`` with the sinusoidal embedding
below; the loop does the same, and otherwise runs the request unguided.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

FACT = "time_cond_proj_dim"  # the model fact (the UNet config's) that says the UNet embeds guidance, and the embedding's width


def embeds_guidance(model: dict[str, Any]) -> bool:
    return bool(model.get(FACT))


def runs_guided(guidance_scale: float, model: dict[str, Any]) -> bool:
    """Whether the loop runs an unconditional pass beside each conditional one (doubling the UNet's batch)."""
    return guidance_scale > 1 and not embeds_guidance(model)


def scale_embedding(guidance_scale: float, dim: int, rows: int) -> np.ndarray:
    """``timestep_cond`` for ``rows`` images: Diffusers' get_guidance_scale_embedding(w = guidance_scale - 1),
    computed with the same torch operations so the loop matches its pipeline bit for bit."""
    import torch

    w = torch.tensor(guidance_scale - 1).repeat(rows) * 1000.0
    half = dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step)
    emb = w.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.numpy()


def unguided(request):
    """The request as the loop runs it on such a UNet: one pass per step (guidance is in the embedding)."""
    return dataclasses.replace(request, guidance_scale=1.0)


def notices(request, model: dict[str, Any]) -> list[str]:
    """What the loop says of a request on a UNet with these model facts: a negative prompt an LCM cannot use."""
    if embeds_guidance(model) and request.negative_prompt not in (None, "", []) and any(request.negative_prompts):
        return ["this UNet embeds guidance (a latent consistency model): it runs on the prompt alone, so the negative prompt is not used"]
    return []
