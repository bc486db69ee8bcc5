"""The module exporters trace: a component with positional tensors in and a tuple out."""

from __future__ import annotations

import numpy as np
import torch

from sdopt.export.spec import ComponentSpec
from sdopt.runtime.torch import forward_of


class PositionalComponent(torch.nn.Module):
    """Calls the same forward functions as the torch backend's executors, so what an
    exporter traces is exactly what the torch backend runs."""

    def __init__(self, spec: ComponentSpec, module: torch.nn.Module):
        super().__init__()
        self.spec, self.module = spec, module

    def forward(self, *args):
        out = forward_of(self.spec.name, text_layers(self.spec))(self.module, **dict(zip(self.spec.input_names, args)))
        return tuple(out[name] for name in self.spec.output_names)


def torch_reference(spec: ComponentSpec, module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch fp32 outputs an exported component is validated against."""
    with torch.inference_mode():
        out = forward_of(spec.name, text_layers(spec))(module, **{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {k: v.float().numpy() for k, v in out.items()}


def text_layers(spec: ComponentSpec) -> str | None:
    """Which layers a text encoder's graph gives past its last (Family.text_outputs), from its outputs' names."""
    for prefix in ("hidden_states", "clip_skip"):
        if any(name.startswith(prefix + ".") for name in spec.output_names):
            return prefix
    return None
