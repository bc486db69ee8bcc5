"""ONNX Runtime's quantizer on ONNX artifacts: int8 weights and activations, calibrated.

int8-static: the UNet's (and, when named, the VAE decoder's) Conv and MatMul get int8 weights (symmetric, per output
channel; KEPT_FLOAT stay float) and uint8 activations whose ranges come from the inputs it sees while the source artifact
generates from a prompt set (sdopt.quant.calibration, the same runs NNCF calibrates on; AVERAGED_RANGES says how the
samples' ranges become one); the graph carries QuantizeLinear /
DequantizeLinear pairs (QDQ), which ONNX Runtime fuses into its int8 kernels (QLinearConv, QLinearMatMul) at load.
Attention given to ONNX Runtime's fused operator (the export's default, sdopt.rewrite.attention) stays float; a VAE
decoder's upsample rewrite is turned back first (sdopt.quant.undo_upsample: its convolution then runs int8).
Other components named are left as they are and the manifest says so: ORT's dynamic quantization of a text encoder
saves little time on a CPU.

u8 x s8 products on a CPU without an int8 dot product (no VNNI or AMX) go through vpmaddubsw, whose pairwise sums
saturate at 16 bits: ONNX Runtime's ``reduce_range`` quantizes weights to 7 bits so they cannot (its documentation's
advice; NNCF's "overflow fix"). ``overflow_fix`` auto turns it on where the quantizing CPU lacks the dot product,
enable/disable force it; the choice and why are recorded, and loading such an artifact on a CPU that lacks the dot
product warns (as for NNCF's).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sdopt.errors import SdoptError, exception_line
from sdopt.manifest import Manifest
from sdopt.quant import Plan, QuantizedComponents
from sdopt.quant.calibration import (CALIBRATED, CALIBRATION_PROMPTS, calibration_record,
                                     check_decoder_schedulers, record_inputs)
from sdopt.quant.engine import Engine, quantized_entry
from sdopt.quant.inpainting_calibration import check_calibration_images, inpainting_record

OP_TYPES = ("Conv", "MatMul")  # what gets int8 kernels
# Kept float: the first and last convolutions (the latents' own scale in and out) — and, by leaving Gemm out of
# OP_TYPES, the timestep embedding's projections (a 2-D Linear exports as Gemm: its input ranges change with every step
# and it costs next to nothing).
KEPT_FLOAT = ("/conv_in/", "/conv_out/")
# How a component's activation ranges come from its calibration samples (ORT's MinMax calibrator either way). The
# UNet's: each sample's min and max, averaged over the samples (ORT's CalibMovingAverage, which averages when it is
# given every sample at once; NNCF's default for per-tensor activations, MEAN_MINMAX) — the extremes of all 40 samples
# cost more resolution than the rare values past the mean clip: sd15 end to end 28.3 -> 32.0 dB. The VAE decoder's:
# the extremes over all samples — it is calibrated across schedulers whose final latents differ ~3.6x in scale, and
# averaged ranges clip the larger ones (28.1 -> 27.8 dB). Measured in docs/onnx.md.
AVERAGED_RANGES = {"unet": True, "unet_shallow": True, "vae_decoder": False}
# Peak memory over the largest calibrated graph's fp32 bytes: the sd15 UNet (3.28 GB) peaked at 17.6 GB — the
# calibration pipeline, the graph, ORT's augmented copy for calibration and their sessions. Checked before any work.
MEMORY_PER_GRAPH_BYTE = 5.5


def choose_reduce_range(option: str | None) -> tuple[bool, str]:
    """Whether weights are quantized to 7 bits (ORT's reduce_range), and why: ``option`` is --overflow-fix's value
    (None or auto: by this CPU)."""
    if option == "enable":
        return True, "asked for (--overflow-fix enable)"
    if option == "disable":
        return False, "asked for (--overflow-fix disable)"
    if option == "first-layer":
        raise SdoptError("--overflow-fix first-layer is NNCF's: ONNX Runtime's quantizer reduces the range of every layer or none; give enable, disable or auto")
    from sdopt.hardware import int8_overflow_by_cpu

    return int8_overflow_by_cpu()


class _Samples:
    """ONNX Runtime's CalibrationDataReader over recorded inputs, cast to the graph's input types (the runtime casts a
    timestep to what the graph takes; the calibration session is given arrays directly)."""

    def __init__(self, samples: list[dict[str, np.ndarray]], dtypes: dict[str, np.dtype]):
        self._samples, self._dtypes = iter(samples), dtypes

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self._samples, None)
        if sample is None:
            return None
        return {k: np.asarray(v).astype(self._dtypes[k]) for k, v in sample.items() if k in self._dtypes}

    def rewind(self):  # ORT calls it between passes of some calibration methods; MinMax makes one
        raise SdoptError("internal: the calibration reader is read once")


def graph_facts(graph: Path) -> tuple[dict[str, np.dtype], list[str], list[str]]:
    """``graph``'s inputs with their numpy types, the nodes KEPT_FLOAT names (by the exporter's module paths), and what
    the manifest says stayed float: KEPT_FLOAT's parts where the graph has them, and its Gemms (OP_TYPES leaves them
    out: the UNet's timestep embedding). Read without its weights."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(graph), load_external_data=False)
    nodes = model.graph.node
    dtypes = {i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    kept = [n.name for n in nodes if n.op_type in OP_TYPES and any(part in n.name for part in KEPT_FLOAT)]
    record = [part for part in KEPT_FLOAT if any(part in name for name in kept)]
    gemms = [n.name for n in nodes if n.op_type == "Gemm"]
    if gemms:
        record.append("Gemm (the timestep embedding)" if any("time_embedding" in name for name in gemms) else "Gemm")
    return dtypes, kept, record


def recipe_arguments(reduce_range: bool, kept: list[str]) -> dict[str, Any]:
    """quantize_static's arguments in sdopt's int8-static recipe, but for the calibration itself (its reader and how
    ranges are taken); measure/ort_int8_ranges.py quantizes with the same."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, op_types_to_quantize=list(OP_TYPES), calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=kept,
                use_external_data_format=True)  # the sd15 UNet's fp32 graph is over protobuf's 2 GB


def quantized_layers(model) -> int:
    """The Conv and MatMul nodes that run int8: those whose weight (input 1) a DequantizeLinear gives (their int32 biases
    are dequantized too, and are not layers)."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sum(n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in dequantized for n in model.graph.node)


def _check_memory(source: Path, manifest: Manifest, names: list[str]) -> None:
    """Refuse, before any work, a quantization that would need more memory than this machine has available (the kernel
    would kill it an hour in)."""
    from sdopt.hardware import available_bytes

    largest = max(sum((source / f.path).stat().st_size for f in manifest.components[n].files if not f.path.endswith(".json")) for n in names)
    need, have = MEMORY_PER_GRAPH_BYTE * largest, available_bytes()
    if have is not None and need > have:
        raise SdoptError(f"ONNX Runtime's int8 quantizer would need about {need / 2**30:.0f} GiB here ({MEMORY_PER_GRAPH_BYTE}x the "
                         f"{largest / 2**30:.1f} GiB graph: calibration keeps the graph, a copy and their sessions) and this machine has "
                         f"{have / 2**30:.1f} GiB available: quantize on a machine with more memory, or an OpenVINO export with "
                         "--backend nncf (sd15's fits in 24 GiB)")


def _images(options: dict[str, Any]) -> tuple[str, ...] | None:
    """--calibration-images as files (a folder's images, or the files named)."""
    from sdopt.input_images import image_files

    images = options.get("calibration_images")
    return image_files(images, "--calibration-images") if images is not None else None


@contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs "please consider pre-processing before quantization" on the root logger at every
    call: the exporter's graphs are shape-inferred and the advice does not apply. Errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _undo_upsample_rewrite(graph: Path, work: Path) -> tuple[int, Path]:
    """The VAE decoder ``graph`` with sdopt's upsample rewrite undone (sdopt.quant.undo_upsample), written under
    ``work``, and how many upsamplers that changed; ``graph`` itself when none."""
    import onnx

    from sdopt.quant.undo_upsample import undo_upsample_rewrite

    model = onnx.load(str(graph), load_external_data=True)
    undone = undo_upsample_rewrite(model)
    if not undone:
        return 0, graph
    target = work / "float" / "model.onnx"
    target.parent.mkdir()
    onnx.save(model, str(target), save_as_external_data=True)  # quantize_static reads it with its weights beside it
    return undone, target


def _linked_into(graph: Path, work: Path) -> Path:
    """``graph`` and its external weights, where it has them, linked (or copied, across file systems) under ``work``.
    ONNX Runtime's quantizer writes a shape-inferred copy beside the graph it is given (``model-inferred.onnx``) and
    removes it only when it gets that far: given the source artifact's own graph, Ctrl-C there left that copy in the
    source, which every reader then refused as changed after export. Links, not symlinks: onnx refuses external weights
    behind a symbolic link."""
    from sdopt.export.onnx_external import EXTERNAL_DATA

    linked = work / "source"
    linked.mkdir()
    for path in (graph, graph.with_name(EXTERNAL_DATA)):
        if path.exists():
            try:
                os.link(path, linked / path.name)
            except OSError:
                shutil.copyfile(path, linked / path.name)
    return linked / graph.name


def _method(name: str) -> str:
    """How ``name``'s activation ranges were taken, as the manifest says."""
    if AVERAGED_RANGES[name]:
        return "MinMax, each sample's min and max averaged over the samples"
    return "MinMax, the min and max over all samples"


def _check_not_optimized(manifest: Manifest, components: list[str]) -> None:
    """A graph saved with `sdopt export --optimize` has ONNX Runtime's fusions in it (SiLU became com.microsoft's
    QuickGelu), whose outputs ONNX Runtime's calibration leaves without a range: its quantizer failed after calibrating
    ("Unable to get valid quantization scale ... when quantizing bias"). Refused before any work instead."""
    optimized = [n for n in CALIBRATED if n in components and n in manifest.export.get("optimizations", {})]
    if optimized:
        raise SdoptError(f"{', '.join(optimized)}: saved with ONNX Runtime's offline optimizations (sdopt export --optimize), whose fused "
                         "operators ONNX Runtime's int8 quantizer cannot calibrate: export the model again without --optimize and "
                         "quantize that (ONNX Runtime applies those optimizations itself when it loads the quantized graph)")


class OrtQuantEngine(Engine):
    def check_plan(self, source: Path, manifest: Manifest, plan: Plan) -> None:
        if plan.exclude:
            raise SdoptError("--exclude names PyTorch layers (unet.conv_in), and --backend onnxruntime quantizes ONNX graphs, "
                             "where those names do not exist: leave it out, or keep a whole component in full precision with --components")
        options = plan.options
        choose_reduce_range(options.get("overflow_fix"))  # refuses first-layer
        if manifest.precision != "fp32" or any(c.precision not in (None, "fp32") for c in manifest.components.values()):
            raise SdoptError("ONNX Runtime's int8 quantizer takes fp32 graphs: export the model with --precision fp32 (the default), then quantize that")
        check_decoder_schedulers(options.get("calibration_schedulers"), plan.components)
        if not set(CALIBRATED) & set(plan.components):
            raise SdoptError("int8-static with --backend onnxruntime quantizes the UNet (and the VAE decoder, when named): "
                             "name unet or vae_decoder in --components")
        _check_not_optimized(manifest, plan.components)
        check_calibration_images(source, manifest, _images(options))
        _check_memory(source, manifest, [n for n in CALIBRATED if n in plan.components])

    def quantize_components(self, source: Path, manifest: Manifest, out: Path, plan: Plan) -> QuantizedComponents:
        import onnx
        from onnxruntime.quantization import quantize_static

        from sdopt.export.onnx import EXTERNAL_DATA, save_graph

        options = plan.options
        prompts = tuple(options["calibration_prompts"]) if options.get("calibration_prompts") else CALIBRATION_PROMPTS
        schedulers = tuple(options["calibration_schedulers"]) if options.get("calibration_schedulers") else None
        images = _images(options)
        wanted = [n for n in CALIBRATED if n in plan.components]
        reduce_range, why = choose_reduce_range(options.get("overflow_fix"))
        samples = record_inputs(source, prompts, wanted, schedulers, images, progress=plan.progress)
        inpainting = inpainting_record(images) if images else None
        entries, notes = {}, []
        for name in plan.components:
            entry = manifest.components[name]
            if name not in CALIBRATED:  # left to the quantize command, which copies it as it is
                notes.append(f"{name} is not quantized: ONNX Runtime's int8-static recipe here covers the UNet and, when named "
                             "(--components unet,vae_decoder), the VAE decoder")
                continue
            graph = source / next(f.path for f in entry.files if f.path.endswith(".onnx"))
            target = out / entry.folder / "model.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".ort-quant-", dir=out) as work, _quiet_root_logger():
                staged = Path(work) / "model.onnx"
                dtypes, kept, kept_record = graph_facts(graph)
                undone, float_graph = _undo_upsample_rewrite(graph, Path(work)) if name == "vae_decoder" else (0, graph)
                if float_graph == graph:
                    float_graph = _linked_into(graph, Path(work))
                if undone:
                    notes.append(f"vae_decoder: the export's {undone} upsample rewrite(s) turned back into upsample + 3x3 convolution before "
                                 "quantizing: ONNX Runtime runs that convolution int8, the transposed one only float (sd15 at 256²: decode 1,414 -> 1,054 ms)")
                try:
                    quantize_static(str(float_graph), str(staged), _Samples(samples[name], dtypes), **recipe_arguments(reduce_range, kept),
                                    extra_options={"CalibMovingAverage": AVERAGED_RANGES[name]})
                except (ValueError, RuntimeError) as exc:
                    raise SdoptError(f"ONNX Runtime's quantizer failed on {name}: {exception_line(exc)}") from exc
                quantized = onnx.load(str(staged), load_external_data=True)
                save_graph(quantized, target)  # model.onnx, with model.onnx_data only over 2 GB
            layers = quantized_layers(quantized)
            del quantized
            entries[name] = quantized_entry(source, out, entry, (".onnx", EXTERNAL_DATA, ".json"), {
                "scheme": "int8-static", "backend": "onnxruntime", "serialized": True, "weights_only": False,
                "mode": "int8 weights (symmetric, per output channel) and uint8 activations (asymmetric), QDQ",
                "op_types": list(OP_TYPES), "layers": layers, "kept_float": kept_record,
                **({"undone_rewrites": {"upsample_transposed_conv": undone}} if undone else {}),
                "overflow_fix": {"mode": "enable" if reduce_range else "disable", "reduce_range": reduce_range, "why": why},
                "calibration": {**calibration_record(prompts, not options.get("calibration_prompts"), wanted, name, schedulers,
                                                     len(samples[name]), inpainting), "method": _method(name)},
            })
        return QuantizedComponents(components=entries, notes=notes)
