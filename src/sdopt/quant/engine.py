"""What a registered quantizer runs: the ``Engine`` type.

The registration (sdopt.quant.Quantizer) declares, as data, what a quantizer
can do; its engine does it. ``sdopt.quant.run.quantize`` does everything
around an engine: it checks the request against the capability table, refuses
sources that are already quantized, copies what is not quantized, writes the
manifest, and renames the folder into place only when complete. An engine:

- ``check_plan``: what needs the model or the engine's own rules, checked
  before the output folder exists (default: nothing);
- ``quantize_components``: writes the quantized components' files under
  ``out`` and returns their manifest entries, each with its ``quantization``
  record.

The torch quantizers share one engine type with more to it
(sdopt.quant.torch_weights.TorchWeights): each adds only its recipes and how
it quantizes, saves and rebuilds a layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdopt.manifest import ComponentEntry, Manifest
    from sdopt.quant import Plan, QuantizedComponents, Quantizer


class Engine(ABC):
    def __init__(self, quantizer: "Quantizer"):
        self.quantizer = quantizer  # its registration: name, capability rows, options

    def check_plan(self, source: Path, manifest: "Manifest", plan: "Plan") -> None:
        """Refuse what the capability table cannot: called before the output folder exists."""

    @abstractmethod
    def quantize_components(self, source: Path, manifest: "Manifest", out: Path, plan: "Plan") -> "QuantizedComponents":
        """Write the files of ``plan.components`` under ``out``; return their manifest entries."""


def quantized_entry(source: Path, out: Path, entry: "ComponentEntry", suffixes: tuple[str, ...], quantization: dict) -> "ComponentEntry":
    """The manifest entry of a component whose quantized files an engine wrote under ``out``/its folder: the source's
    config.json copied beside them, the files (``suffixes``) listed, the ``quantization`` record, the rest as it was."""
    from sdopt.manifest import ComponentEntry, files_in

    config = source / entry.folder / "config.json"
    if config.is_file():
        (out / entry.folder / "config.json").write_bytes(config.read_bytes())
    return ComponentEntry(folder=entry.folder, files=files_in(out / entry.folder, out, suffixes), precision=entry.precision,
                          quantization=quantization, inputs=entry.inputs, outputs=entry.outputs, replaced=entry.replaced)

