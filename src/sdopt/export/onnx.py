"""Export a Diffusers SD checkpoint to ONNX graphs in Optimum's layout, validated against PyTorch.

Exporter choice (measured on the sd15 zoo model, docs/onnx.md): the
TorchScript-based ``torch.onnx.export(dynamo=False)`` exports the UNet in
about half the time of the dynamo exporter with the same parity (~4e-6
relative), so we use it; its deprecation warning is silenced here on purpose.
Graphs over 2 GB (protobuf's limit) are saved with their weights in one
``model.onnx_data`` file beside ``model.onnx``, as Optimum names it.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from tqdm import tqdm

from sdopt.errors import SdoptError
from sdopt.export.parity import compare, settle
from sdopt.export.run import ExportedComponents, component_config, prepare_source, write_optimum_model_index
from sdopt.export.spec import ComponentSpec, check_inputs, trace_inputs
from sdopt.export.onnx_external import EXTERNAL_DATA, move_graph
from sdopt.export.tracing import PositionalComponent, torch_reference
from sdopt.manifest import ComponentEntry, Manifest, files_in
from sdopt.runtime.versions import library_versions

DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2**31 - 2**26  # stay clear of the 2 GiB hard limit: metadata counts too


class Quantizer(Protocol):
    """What puts Q/DQ into the modules an ONNX export traces (sdopt.tensorrt.quantize's, for TensorRT's int8/fp8)."""

    names: tuple[str, ...]  # the components it quantizes
    precision: str  # int8, fp8
    tolerance: float  # the graph against its fake-quantized module, relative to the output's largest value

    def apply(self, spec: ComponentSpec, module: torch.nn.Module) -> dict[str, Any]: ...  # in place; the manifest's record

    def runnable(self, path: Path, scratch: Path) -> Path: ...  # the graph as ONNX Runtime runs it (a copy in scratch, or path)


def _trace_to_onnx(spec: ComponentSpec, module: torch.nn.Module, inputs: dict[str, np.ndarray], path: Path, opset: int) -> None:
    wrapper = PositionalComponent(spec, module).eval()
    args = tuple(torch.from_numpy(inputs[n]) for n in spec.input_names)
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of dynamo (slower here, see module doc),
        # and the tracer warns about Python-side shape checks that do not affect these graphs.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            custom_opsets=custom_opsets(module),
        )


def custom_opsets(module: torch.nn.Module) -> dict[str, int]:
    """The operator domains beyond ONNX's own that ``module``'s rewritten parts export to (sdopt.rewrite.attention)."""
    from sdopt.rewrite.attention import CUSTOM_OPSETS, PROCESSORS

    domains: dict[str, int] = {}
    for name, opsets in CUSTOM_OPSETS.items():
        if any(isinstance(getattr(m, "processor", None), PROCESSORS[name]) for m in module.modules()):
            domains.update(opsets)
    return domains


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """model.onnx alone, or model.onnx + model.onnx_data when over protobuf's 2 GB limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Weights first: ByteSize() itself raises on a proto past 2 GB.
    if _initializer_bytes(model) > _PROTOBUF_LIMIT or model.ByteSize() > _PROTOBUF_LIMIT:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=EXTERNAL_DATA, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _validate(path: Path, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: float) -> dict[str, Any]:
    """Run the graph in ONNX Runtime at a shape other than the traced one, and compare with PyTorch's outputs."""
    from sdopt.runtime.onnxruntime import OrtComponent

    session = OrtComponent(path, ["CPUExecutionProvider"], device="cpu")
    got = session(**inputs)
    session.close()
    return compare(reference, got, tolerance)


def export_components(source: Path, manifest: Manifest, out: Path, precision: str, options: dict[str, Any],
                      quantizer: Quantizer | None = None) -> ExportedComponents:
    """``quantizer``: puts Q/DQ into the modules it names before they are traced (TensorRT's int8/fp8: sdopt.tensorrt.quantize);
    each such graph is validated against its fake-quantized module, within the quantizer's tolerance."""
    opset = DEFAULT_OPSET if options.get("opset") is None else int(options["opset"])  # --opset 0 is refused, not read as "unset"
    if not 14 <= opset <= 21:
        raise SdoptError(f"--opset {opset}: choose an opset between 14 and 21 (default {DEFAULT_OPSET})")
    skip_validation = bool(options.get("skip_validation"))
    from sdopt.runtime.onnxruntime import native_path

    native_path(out, exact=True)  # a name the exporter or ONNX Runtime cannot open: refused before the tracing, not after it
    prepared = prepare_source(source, manifest, options)
    model_info = prepared.model
    components, parity, notes = {}, {}, []
    export_info: dict[str, Any] = {"opset": opset, "exporter": "torch.onnx.export(dynamo=False)"}

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        # Named in the bar's status: one component takes most of a minute at SD 1.5's size, the bar standing at its count.
        # Drawn at once (a line per component off a terminal): the bar drew its count just before, with the last name
        bar = tqdm(prepared.names, desc="exporting to ONNX", unit="component", disable=not options.get("progress", True))
        for name in bar:
            bar.set_postfix_str(name)
            spec = prepared.specs[name]
            # One module in memory at a time: traced, its reference outputs kept, and freed
            # before its graph is consolidated and loaded by ONNX Runtime to validate.
            module = prepared.take(name)
            quantized = quantizer is not None and name in quantizer.names
            if quantized:
                export_info.setdefault("quantization", {})[name] = quantizer.apply(spec, module)
            raw = staging / name / "model.onnx"
            raw.parent.mkdir(parents=True)
            _trace_to_onnx(spec, module, trace_inputs(name, model_info), raw, opset)
            inputs = check_inputs(name, model_info)
            reference = None if inputs is None else torch_reference(spec, module, inputs)
            del module
            gc.collect()
            path = out / name / "model.onnx"
            move_graph(raw, path)
            runs = manifest.component_precision(name, precision)  # SDXL's VAE stays fp32 under fp16
            if runs == "fp16":
                from sdopt.export.onnx_fp16 import convert_to_fp16

                export_info.setdefault("fp16", {})[name] = convert_to_fp16(path)
            elif precision == "fp16":
                export_info.setdefault("fp16", {})[name] = {"kept": runs, "why": "the VAE's force_upcast: it overflows fp16"}
            if options.get("optimize"):
                from sdopt.export.onnx_optimize import optimize_graph

                export_info.setdefault("optimizations", {})[name] = optimize_graph(path, name, precision)
            if quantized:
                with tempfile.TemporaryDirectory(dir=staging) as scratch:
                    parity[name] = _validate(quantizer.runnable(path, Path(scratch)), inputs, reference, quantizer.tolerance)
            else:
                parity[name] = _validate(path, inputs, reference, spec.tolerance[precision])
            settle(name, parity[name], quantizer.precision if quantized else precision, skip_validation, notes)  # measured and recorded either way
            shutil.copy(component_config(source, spec.source_folder, name, options), out / name / "config.json")
            components[name] = ComponentEntry(
                folder=name,
                files=files_in(out / name, out, (".onnx", EXTERNAL_DATA, ".json")),
                precision=runs,
                inputs=[t.to_dict() for t in spec.inputs],
                outputs=[t.to_dict() for t in spec.outputs],
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if prepared.rewrites:
        export_info["rewrites"] = prepared.rewrites
    write_optimum_model_index(source, out)
    return ExportedComponents(
        components=components,
        parity=parity,
        backend_versions=library_versions("onnx", "onnxruntime", "torch"),
        export=export_info,
        notes=notes,
    )
