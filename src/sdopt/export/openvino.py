"""Export a Diffusers SD checkpoint to OpenVINO IR in Optimum Intel's layout, validated against PyTorch.

Route (measured on the tiny and sd15 zoo models, docs/openvino.md): PyTorch ->
TorchScript trace -> ``openvino.convert_model``, not PyTorch -> ONNX -> OpenVINO.
The direct route keeps GroupNorm as one GroupNormalization op (the ONNX route
decomposes it into reshapes and MVNs: 1387 ops against 1048 for the tiny UNet),
needs no onnx package, and has no 2 GB protobuf limit to work around for the
sd15 UNet. We trace ourselves with check_trace=False: convert_model's own
trace re-runs the model to check it, which doubled the conversion time.

Each component is saved with dynamic batch and spatial axes; static shapes
(--height/--width/--batch) are recorded in the manifest, and the runtime
reshapes to them before compiling (runtime/openvino.py). Weights are stored
fp32 for an fp32 artifact and fp16 for fp16/bf16 ones (OpenVINO converts them
to the inference precision at compile time); the precision that runs is set by
INFERENCE_PRECISION_HINT, and what the compiled model actually runs is asked of
it at validation and written to the manifest.
"""

from __future__ import annotations

import gc
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from tqdm import tqdm

from sdopt.errors import SdoptError
from sdopt.export.parity import compare, settle
from sdopt.export.run import ExportedComponents, component_config, prepare_source, write_optimum_model_index
from sdopt.export.spec import CHECK_LATENT, ComponentSpec, check_inputs, dummy_inputs, latent_image_size, trace_inputs
from sdopt.export.tracing import PositionalComponent, torch_reference
from sdopt.machine import isa_caps
from sdopt.manifest import ComponentEntry, Manifest, files_in
from sdopt.request import MAX_IMAGES, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE
from sdopt.runtime.openvino import HINTS, MODEL_FILE, OpenVINOComponent, compile_config, crash_under_the_cap, device_facts, static_axes
from sdopt.runtime.versions import library_versions

# bf16 has 3 mantissa bits fewer than fp16: PyTorch bf16 moves the tiny model's outputs by up to
# 2.8e-2 of their scale (vae_decoder), over the fp16 tolerance (1e-2). OpenVINO keeps norms in f32.
BF16_TOLERANCE = 0.1
_OV_TYPES = {"float32": ov.Type.f32, "int64": ov.Type.i64, "int32": ov.Type.i32}


def static_shapes_from(options: dict[str, Any]) -> dict[str, int] | None:
    height, width, batch = options.get("height"), options.get("width"), options.get("batch")
    if (height is None) != (width is None):
        raise SdoptError("give --height and --width together (the image size the artifact is built for), or neither")
    for flag, value in (("--height", height), ("--width", width)):
        if value is not None and (value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE):
            raise SdoptError(f"{flag} {value}: must be a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE}")
    if batch is not None and not 1 <= batch <= MAX_IMAGES:  # more than one call may make: no request could run it
        raise SdoptError(f"--batch {batch}: give the number of images per request, 1 to {MAX_IMAGES}")
    shapes = {k: int(v) for k, v in (("batch", batch), ("height", height), ("width", width)) if v is not None}
    return shapes or None


def preflight(options: dict[str, Any], precision: str) -> None:
    """Before any slow work or output folder: the export's check would crash this process under a oneDNN cap that hides
    this CPU's AVX-512 (it runs a size OpenVINO segfaults at there; runtime.openvino.crash_under_the_cap)."""
    if crash := crash_under_the_cap():
        raise SdoptError(f"cannot export to OpenVINO here: {crash}")


def convert(spec: ComponentSpec, module: torch.nn.Module, example: dict[str, np.ndarray]) -> ov.Model:
    """Trace one component and convert it, with the spec's names and dynamic axes."""
    wrapper = PositionalComponent(spec, module).eval()
    args = tuple(torch.from_numpy(example[n]) for n in spec.input_names)
    shapes = [
        (ov.PartialShape([-1 if axis in t.axes else size for axis, size in enumerate(example[t.name].shape)]), _OV_TYPES[t.dtype])
        for t in spec.inputs
    ]
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-side shape checks in Diffusers that do not affect the graph.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, args, check_trace=False)
        model = ov.convert_model(traced, example_input=args, input=shapes)
    for port, name in zip(model.inputs, spec.input_names):
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    if len(model.outputs) != len(spec.outputs):
        raise SdoptError(f"{spec.name}: the converted graph has {len(model.outputs)} outputs, the spec {len(spec.outputs)}")
    for port, name in zip(model.outputs, spec.output_names):
        port.get_tensor().set_names({name})
    return model


def _validation_inputs(spec: ComponentSpec, model_info: dict, static: dict[str, int] | None) -> dict[str, np.ndarray]:
    if not static or spec.name.startswith("text_encoder"):  # text encoders' batch stays dynamic in static artifacts
        return check_inputs(spec.name, model_info)
    batch = static.get("batch", 1) * (2 if spec.name in ("unet", "unet_shallow") else 1)
    height, width = latent_image_size(model_info, CHECK_LATENT)  # a batch-only static artifact: the check's size
    return dummy_inputs(spec.name, model_info, batch=batch, height=static.get("height", height), width=static.get("width", width), seed=1)


def _validate(core: ov.Core, path: Path, spec: ComponentSpec, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str, axes) -> tuple[dict, str]:
    """Run the saved IR through the runtime's own executor (reshaped, with the precision hint)
    and compare with PyTorch fp32."""
    component = OpenVINOComponent(core, path, "CPU", compile_config(precision), axes)
    got = component(**inputs)
    component.close()
    # Judged by the precision the device ran: a CPU without fp16 arithmetic runs an fp16 IR in bf16 (said in a note).
    judged = component.runs if component.runs in ("fp16", "bf16") else precision
    return {**compare(reference, got, tolerance(spec, judged)), "judged_as": judged}, component.runs


def tolerance(spec: ComponentSpec, precision: str) -> float:
    return spec.tolerance.get(precision) or BF16_TOLERANCE


def export_components(source: Path, manifest: Manifest, out: Path, precision: str, options: dict[str, Any]) -> ExportedComponents:
    static = static_shapes_from(options)
    skip_validation = bool(options.get("skip_validation"))
    prepared = prepare_source(source, manifest, options)  # always traced from fp32: the IR's precision is ours to set
    model_info = prepared.model
    compress = precision != "fp32"
    core = ov.Core()  # no cache: validation must not leave compiled blobs behind
    components, parity, runs = {}, {}, {}
    failures: list[str] = []  # what --skip-validation kept
    # For validation only: the shapes the runtime would compile, from a stand-in manifest.
    shaped = Manifest(backend="openvino", precision=precision, components={}, model=model_info, static_shapes=static)

    # Named in the bar's status: one component takes most of a minute at SD 1.5's size, the bar standing at its count.
    # Drawn at once (a line per component off a terminal): the bar drew its count just before, with the last name
    bar = tqdm(prepared.names, desc="exporting to OpenVINO", unit="component", disable=not options.get("progress", True))
    for name in bar:
        bar.set_postfix_str(name)
        spec = prepared.specs[name]
        # One module in memory at a time (the converted graph shares its weights until saved):
        # converted, saved, its reference outputs kept, and freed before the IR is compiled to validate.
        module = prepared.take(name)
        model = convert(spec, module, trace_inputs(name, model_info))
        path = out / name / MODEL_FILE
        path.parent.mkdir(parents=True)
        ov.save_model(model, path, compress_to_fp16=compress)
        del model
        inputs = _validation_inputs(spec, model_info, static)
        reference = None if inputs is None else torch_reference(spec, module, inputs)
        del module
        gc.collect()
        shutil.copy(component_config(source, spec.source_folder, name, options), out / name / "config.json")
        entry = ComponentEntry(
            folder=name,
            files=files_in(out / name, out, (".xml", ".bin", ".json")),
            precision=precision,
            inputs=[t.to_dict() for t in spec.inputs],
            outputs=[t.to_dict() for t in spec.outputs],
        )
        shaped.components[name] = entry
        axes = static_axes(shaped, name) if static else {}
        parity[name], runs[name] = _validate(core, path, spec, inputs, reference, precision, axes)
        # measured and recorded either way; --skip-validation keeps a failed component
        settle(name, parity[name], parity[name]["judged_as"], skip_validation, failures, _runs_instead(precision, runs[name]))
        components[name] = entry

    facts = device_facts(core, "CPU")
    export_info: dict[str, Any] = {
        "converter": "openvino.convert_model(torch.jit.trace)",
        "weights": "fp16" if compress else "fp32",
        "inference_precision_hint": HINTS[precision],
        # with the ISA caps it ran under (as a bench row records them): under ONEDNN_MAX_CPU_ISA=AVX512_CORE OpenVINO still
        # lists BF16 among the CPU's capabilities, and the record claimed what the check never ran
        "validated_on": {**facts, **({"isa_caps": caps} if (caps := isa_caps()) else {}), "runs": runs} if runs else None,
    }
    if prepared.rewrites:
        export_info["rewrites"] = prepared.rewrites
    notes = _precision_notes(precision, runs, facts) + failures
    if static:
        notes.append(f"static shapes {static}: the runtime compiles for them; other sizes are refused unless loaded with reshape (sdopt generate/serve --reshape, sdopt.load(..., reshape=True))")
    write_optimum_model_index(source, out)
    return ExportedComponents(
        components=components,
        parity=parity,
        backend_versions=library_versions("openvino", "torch"),
        export=export_info,
        notes=notes,
        static_shapes=static,
    )


def _runs_instead(precision: str, ran: str) -> str:
    """Why a reduced-precision graph may miss its tolerance: the device ran another precision than asked."""
    if ran == precision:
        return ""
    return (f" (this CPU runs {ran} where {precision} was asked: it lacks {precision} arithmetic, and {ran}'s fewer mantissa "
            f"bits give a larger error; export --precision {ran} says so, or a CPU with {precision} runs it as asked)")


def _precision_notes(precision: str, runs: dict[str, str], facts: dict[str, Any]) -> list[str]:
    ran = sorted(set(runs.values()))
    where = f"{facts['device']} ({facts.get('name', '?')}, capabilities {', '.join(facts.get('capabilities', [])) or '?'})"
    if ran == [precision]:
        return [f"runs {precision} on the export machine's {where}: asked of the compiled model"]
    return [
        f"asked for {precision} (INFERENCE_PRECISION_HINT {HINTS[precision]}), but the export machine's {where} "
        f"runs {', '.join(ran)}: it lacks {precision} support. A device with it runs {precision}"
    ]
