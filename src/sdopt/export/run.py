"""The export command around every exporter: check, write atomically, describe."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError
from sdopt.export import EXPORTERS, get_exporter
from sdopt.fsutil import atomic_output_dir, check_output_dir, local_inputs
from sdopt.manifest import ComponentEntry, Manifest, derive, read_manifest
from sdopt.source import resolve

# Files an exported artifact carries over from its source, as Optimum's exports do.
_CARRIED = ("tokenizer", "scheduler")


@dataclass
class ExportedComponents:
    components: dict[str, ComponentEntry]
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    backend_versions: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)  # what was applied: opset, optimizations, ...
    notes: list[str] = field(default_factory=list)
    static_shapes: dict[str, int] | None = None
    precision: str | None = None  # when it differs from the requested one (e.g. "mixed")


def write_optimum_model_index(source: Path, out: Path) -> None:
    """Optimum's ONNX and Optimum Intel's OpenVINO exports keep the pipeline's model_index.json, with the VAE split in two."""
    import json

    index = json.loads((source / "model_index.json").read_text())
    index.pop("vae", None)
    index.update({"vae_decoder": ["diffusers", "AutoencoderKL"], "vae_encoder": ["diffusers", "AutoencoderKL"]})
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def source_checkpoint(model: str | Path) -> tuple[Path, Manifest]:
    """A source for export or quantization must be a full-precision PyTorch checkpoint."""
    folder = resolve(model)
    manifest = read_manifest(folder)
    if manifest.backend != "torch" or any(c.quantization for c in manifest.components.values()):
        raise SdoptError(
            f"{folder} is a {manifest.backend} artifact{' with quantized weights' if manifest.backend == 'torch' else ''}; "
            "export from the original PyTorch (Diffusers) checkpoint"
        )
    if not manifest.inferred:
        manifest.verify_files(folder)
    return folder, manifest


def export(model: str | Path, target: str, out: str | Path, precision: str = "fp32", force: bool = False, **options: Any) -> Manifest:
    exporter = get_exporter(target)
    exporter.check_options(options, EXPORTERS)
    if precision not in exporter.precisions:
        raise SdoptError(f"--to {target} supports precisions {', '.join(exporter.precisions)}, not {precision}")
    check_output_dir(out, force, local_inputs(model))  # before any slow work
    source, source_manifest = source_checkpoint(model)
    impl = exporter.implementation()

    with atomic_output_dir(out, force=force, inputs=(source,)) as tmp:
        result: ExportedComponents = impl.export_components(source, source_manifest, tmp, precision, options)
        for name in _CARRIED:
            shutil.copytree(source / name, tmp / name)
        manifest = derive(
            source_manifest, source, tmp, result.components,
            backend=exporter.backend,
            precision=result.precision or precision,
            backend_versions=result.backend_versions,
            static_shapes=result.static_shapes,
            parity=result.parity,
            export={"target": target, **result.export},
            notes=result.notes,
        )
        manifest.write(tmp)
    return manifest
