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

from sdopt.errors import MissingDependencyError, SdoptError
from sdopt.export.run import ExportedComponents, prepare_source
from sdopt.manifest import Manifest, files_in
from sdopt.tensorrt.engines import here, require_gpu, timing_cache_path
from sdopt.tensorrt.profiles import parse_batch_range, parse_sizes, profiles_for, shape_profile, static_profile

PLAN_FILE = "model.plan"
QUANTIZED_PRECISIONS = ("int8", "fp8")  # ModelOpt's Q/DQ in the UNet (sdopt.tensorrt.quantize), the rest fp16
_ONNX_OPTIONS = ("skip_validation", "opset", "no_rewrites", "rewrite", "loras", "embeddings")  # fused into the graphs the engines build from


def preflight(options: dict[str, Any], precision: str) -> None:
    """Before any slow work or output folder: shape options that parse, a GPU, and ModelOpt for int8/fp8."""
    shapes_of(options, default_side=None)
    require_gpu()
    if precision in QUANTIZED_PRECISIONS:
        import importlib.util

        if importlib.util.find_spec("modelopt") is None:  # found, not imported: importing it takes seconds
            raise MissingDependencyError("modelopt", "modelopt")
    elif options.get("calibration_prompts"):
        raise SdoptError(f"--calibration-prompts calibrates int8 and fp8 engines; --precision {precision} has nothing to calibrate")


def shapes_of(options: dict[str, Any], default_side: int | None):
    """(ShapeProfile, static) from --height/--width | --shapes, --batch-range, --static; without a size,
    ``default_side`` (the model's own; None: only check the options, as preflight does)."""
    height, width, listed = options.get("height"), options.get("width"), options.get("shapes")
    if listed is not None and (height or width):
        raise SdoptError("give either --shapes or --height/--width, not both")
    if (height is None) != (width is None):
        raise SdoptError("give --height and --width together, or neither (the model's default size)")
    side = default_side or 512  # the preflight's stand-in: only the options' syntax is checked then
    sizes = parse_sizes(listed) if listed is not None else parse_sizes(f"{height or side}x{width or side}")
    batch = parse_batch_range("1:4" if options.get("batch_range") is None else options["batch_range"])
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
    quantizer = _quantizer(source, manifest, precision, options) if precision in QUANTIZED_PRECISIONS else None
    onnx = export_onnx(source, manifest, out, "fp32", {k: v for k, v in options.items() if k in (*_ONNX_OPTIONS, "progress")}, quantizer=quantizer)
    profiles = profiles_for({n: specs[n] for n in onnx.components}, manifest.model, shapes, static=static)
    cache = timing_cache_path(key)
    built = {}
    quantized = onnx.export.pop("quantization", {})  # the ONNX export's record of each quantized module: the component's own below
    for name in tqdm(list(onnx.components), desc="building TensorRT engines", unit="engine", disable=not options.get("progress", True)):
        entry = onnx.components[name]
        if name in quantized:
            runs = precision
            entry.quantization = quantizer.component_record(quantized[name])
        else:  # int8/fp8 quantize the UNet alone: the rest in fp16. SDXL's VAE: no fp16 kernels (it overflows)
            runs = manifest.component_precision(name, "fp16" if quantizer is not None else precision)
        built[name] = build_engine(out / name / "model.onnx", out / name / PLAN_FILE, profiles[name], runs, cache,
                                   refit=bool(options.get("refit")))
        entry.files = files_in(out / name, out, (".onnx", ".onnx_data", ".plan", ".json"))
        entry.precision = runs
    static_shapes = {"batch": shapes.batch[0], "height": shapes.height[0], "width": shapes.width[0]} if static else None
    return ExportedComponents(
        components=onnx.components,
        parity=onnx.parity,  # the ONNX graphs' parity; the engines' is the bench's PSNR against the reference
        backend_versions={**onnx.backend_versions, "tensorrt": key["tensorrt_version"]},
        export={"onnx": onnx.export, "tensorrt": key, "engines": built, "timing_cache": str(cache),
                "profiles": {n: {i: p.to_dict() for i, p in ps.items()} for n, ps in profiles.items()}},
        notes=[*onnx.notes, f"engines built for TensorRT {key['tensorrt_version']} on compute capability {key['compute_capability']}: they run only there"],
        static_shapes=static_shapes,
        precision="fp16" if quantizer is not None else None,  # as an NNCF int8 artifact: its precision, the UNet's quantization
    )


def _quantizer(source: Path, manifest: Manifest, precision: str, options: dict[str, Any]):
    """ModelOpt's quantizer for the UNet, with the inputs it calibrates on: the UNet's, recorded while the checkpoint
    generates the calibration prompts (--calibration-prompts; sdopt's built-in set by default), as int8-static's."""
    from sdopt.quant.calibration import CALIBRATION_PROMPTS, calibration_prompts, calibration_record, record_inputs
    from sdopt.runtime.conditioning import is_inpainting
    from sdopt.tensorrt.quantize import QUANTIZED, ModelOptQuantizer, calibration_device, modelopt_quantization

    if is_inpainting(manifest, source):  # its UNet takes inpainting requests only: no generations from text to record
        raise SdoptError(f"--precision {precision} calibrates the UNet on the checkpoint's generations from text; this is an inpainting "
                         "checkpoint (its UNet reads the mask and the masked image): export it with --precision fp16")
    modelopt_quantization()  # imported (seconds) before calibration's generating, so a broken install says so first
    given = options.get("calibration_prompts")
    prompts = calibration_prompts(given) if given else CALIBRATION_PROMPTS
    device = calibration_device()
    samples = record_inputs(source, prompts, list(QUANTIZED), progress=options.get("progress", True), device=device)["unet"]
    return ModelOptQuantizer(precision, samples, calibration_record(prompts, not given, list(QUANTIZED), "unet", None, len(samples)), device)


def rebuild(artifact: str | Path, out: str | Path, force: bool = False) -> Manifest:
    """`sdopt export TRT_ARTIFACT --to tensorrt --rebuild -o NEW`: the engines built again on this machine from the
    ONNX graphs the artifact keeps, with the shape profiles, precision and refit its manifest records. For an
    artifact whose engines were built for another TensorRT version or GPU generation (loading it says so)."""
    import shutil

    from sdopt.manifest import hash_components, read_manifest
    from sdopt.outputs import atomic_output_dir, check_output_dir, local_inputs
    from sdopt.source import resolve
    from sdopt.tensorrt.build import build_engine
    from sdopt.tensorrt.profiles import InputProfile

    folder = resolve(artifact)
    old = read_manifest(folder)
    if old.backend != "tensorrt":
        raise SdoptError(f"--rebuild builds a TensorRT artifact's engines again from the ONNX graphs it keeps; {folder} is an "
                         f"artifact for {old.backend}: export from its checkpoint instead (sdopt export CHECKPOINT --to tensorrt -o NEW)")
    recorded, engines = old.export.get("profiles") or {}, old.export.get("engines") or {}
    missing = [n for n in old.components if n not in recorded or n not in engines or not (folder / old.components[n].folder / "model.onnx").is_file()]
    if missing:
        raise SdoptError(f"{folder}: no kept ONNX graph or recorded shape profile for {', '.join(missing)}: "
                         "it cannot be rebuilt; export it again from its checkpoint")
    old.verify_files(folder)  # the graphs are the ones the manifest describes
    old_id = old.artifact_id  # before its file entries are replaced by the rebuilt ones
    check_output_dir(out, force, local_inputs(folder))
    key = here()  # TensorRT and a GPU, or the error naming what is missing: before any slow work
    cache = timing_cache_path(key)
    with atomic_output_dir(out, force=force, inputs=(folder,)) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PLAN_FILE, "sdopt.json"))
        built = {}
        for name in tqdm(list(old.components), desc="rebuilding TensorRT engines", unit="engine"):
            entry = old.components[name]
            profiles = {i: InputProfile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for i, p in recorded[name].items()}
            built[name] = build_engine(tmp / entry.folder / "model.onnx", tmp / entry.folder / PLAN_FILE, profiles, engines[name]["precision"],
                                       cache, refit=bool(engines[name].get("refittable")))
            entry.files = files_in(tmp / entry.folder, tmp, (".onnx", ".onnx_data", ".plan", ".json"))
        was = old.export.get("tensorrt") or {}
        old.export = {**old.export, "tensorrt": key, "engines": built, "timing_cache": str(cache),
                      "rebuilt_from": {"artifact_id": old_id, "tensorrt": was}}
        old.backend_versions = {**old.backend_versions, "tensorrt": key["tensorrt_version"]}
        old.notes = [n for n in old.notes if not n.startswith("engines built for TensorRT")] + [
            f"engines built for TensorRT {key['tensorrt_version']} on compute capability {key['compute_capability']}: they run only there "
            f"(rebuilt from the kept ONNX graphs; built before for TensorRT {was.get('tensorrt_version')} on {was.get('compute_capability')})"]
        old.created = ""  # stamped anew
        hash_components(old.components, tmp)
        old.write(tmp)
    return old
