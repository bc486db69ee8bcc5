"""Export to TensorRT engines: the ONNX exporter's graphs (kept in the artifact), then one engine per component.

Layout: each component folder holds ``model.onnx`` (+ ``model.onnx_data``) as the
ONNX exporter writes it, and ``model.plan``, the serialized engine. The manifest
records the TensorRT version and GPU compute capability the engines were built
for (``export.tensorrt``), each input's min/opt/max shape (``export.profiles``),
and the timing cache used. See sdopt.tensorrt for what is and is not verified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from sdopt.errors import SdoptError
from sdopt.export.run import ExportedComponents, prepare_source
from sdopt.manifest import Manifest, files_in
from sdopt.tensorrt.engines import here, require_gpu, timing_cache_path
from sdopt.tensorrt.profiles import parse_batch_range, parse_sizes, profiles_for, shape_profile, static_profile

PLAN_FILE = "model.plan"
_ONNX_OPTIONS = ("skip_validation", "opset")


def preflight(options: dict[str, Any]) -> None:
    """Before any slow work or output folder: shape options that parse, and a GPU."""
    shapes_of(options, default_side=None)
    require_gpu()


def shapes_of(options: dict[str, Any], default_side: int | None):
    """(ShapeProfile, static) from --height/--width | --shapes, --batch-range, --static; without a size,
    ``default_side`` (the model's own; None: only check the options, as preflight does)."""
    height, width, listed = options.get("height"), options.get("width"), options.get("shapes")
    if listed and (height or width):
        raise SdoptError("give either --shapes or --height/--width, not both")
    if (height is None) != (width is None):
        raise SdoptError("give --height and --width together, or neither (the model's default size)")
    side = default_side or 512  # the preflight's stand-in: only the options' syntax is checked then
    sizes = parse_sizes(listed) if listed else parse_sizes(f"{height or side}x{width or side}")
    batch = parse_batch_range(options.get("batch_range") or "1:4")
    static = bool(options.get("static"))
    if static:
        if len(sizes) > 1 or batch[0] != batch[1]:
            raise SdoptError("--static builds for one size and one batch: give one --height/--width and --batch-range N:N")
        return static_profile(sizes[0][0], sizes[0][1], batch[0]), True
    return shape_profile(sizes, batch), False


def export_components(source: Path, manifest: Manifest, out: Path, precision: str, options: dict[str, Any]) -> ExportedComponents:
    from sdopt.export.onnx import export_components as export_onnx
    from sdopt.tensorrt.build import build_engine

    key = here()
    shapes, static = shapes_of(options, int(manifest.model["sample_size"]) * int(manifest.model["vae_scale_factor"]))
    specs = prepare_source(source, manifest, {}).specs
    onnx = export_onnx(source, manifest, out, "fp32", {k: v for k, v in options.items() if k in _ONNX_OPTIONS})
    profiles = profiles_for({n: specs[n] for n in onnx.components}, manifest.model, shapes, static=static)
    cache = timing_cache_path(key)
    built = {}
    for name in tqdm(list(onnx.components), desc="building TensorRT engines", unit="engine"):
        built[name] = build_engine(out / name / "model.onnx", out / name / PLAN_FILE, profiles[name], precision, cache,
                                   refit=bool(options.get("refit")))
        entry = onnx.components[name]
        entry.files = files_in(out / name, out, (".onnx", ".onnx_data", ".plan", ".json"))
        entry.precision = precision
    static_shapes = {"batch": shapes.batch[0], "height": shapes.height[0], "width": shapes.width[0]} if static else None
    return ExportedComponents(
        components=onnx.components,
        parity=onnx.parity,  # the ONNX graphs' parity; the engines' is the bench's PSNR against the reference
        backend_versions={**onnx.backend_versions, "tensorrt": key["tensorrt_version"]},
        export={"onnx": onnx.export, "tensorrt": key, "engines": built, "timing_cache": str(cache),
                "profiles": {n: {i: p.to_dict() for i, p in ps.items()} for n, ps in profiles.items()}},
        notes=[*onnx.notes, f"engines built for TensorRT {key['tensorrt_version']} on compute capability {key['compute_capability']}: they run only there"],
        static_shapes=static_shapes,
    )
