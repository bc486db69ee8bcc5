"""A GEGLU's one projection as two: the value and the gate each from their own linear layer.

Diffusers' ``GEGLU`` (the feed-forward of every SD 1.x/2.x/XL transformer block) computes one
linear layer of twice the width and splits its output in halves: ``value * gelu(gate)``.
The halves are just the first and last rows of the weight, so two linear layers of those rows
give the same numbers (each output is the same dot product) without the split. What it buys:
OpenVINO's CPU plugin runs that split as a reference kernel over the whole
(batch × tokens × 2·inner) output — 3% of sd15's int8-static UNet call at 256²
(measure/openvino_profile.py); two plain matmuls leave nothing to copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdopt.rewrite.modules import replace_module


class SplitGEGLU(nn.Module):
    """Stands in for a Diffusers ``GEGLU``: the same outputs from two linear layers instead of one and a split."""

    def __init__(self, original: nn.Module):
        super().__init__()
        inner = original.proj.out_features // 2
        self.value = _rows(original.proj, slice(0, inner))
        self.gate = _rows(original.proj, slice(inner, None))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.value(hidden_states) * F.gelu(self.gate(hidden_states))


def _rows(proj: nn.Linear, rows: slice) -> nn.Linear:
    """A frozen linear layer computing ``rows`` of ``proj``'s outputs, with those rows of its weight and bias."""
    weight = proj.weight[rows]
    layer = nn.Linear(proj.in_features, weight.shape[0], bias=proj.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if proj.bias is not None:
            layer.bias.copy_(proj.bias[rows])
    return layer.requires_grad_(False)


def rewritable(module: nn.Module) -> bool:
    """Exactly Diffusers' GEGLU (a subclass may compute something else) over a plain linear layer."""
    from diffusers.models.activations import GEGLU

    return type(module) is GEGLU and type(module.proj) is nn.Linear and module.proj.out_features % 2 == 0


def rewrite_geglus(root: nn.Module) -> int:
    """Replace every GEGLU under ``root`` in place; how many ``root`` holds rewritten afterwards (the
    DeepCache halves share their blocks, so the second half finds them already done)."""
    for name, module in [(n, m) for n, m in root.named_modules() if rewritable(m)]:
        replace_module(root, name, SplitGEGLU(module))
    return sum(isinstance(m, SplitGEGLU) for m in root.modules())
