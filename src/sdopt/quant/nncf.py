"""NNCF quantization of OpenVINO artifacts: weight compression, and int8 with calibrated activations.

Schemes (what each applies is recorded in every component's ``quantization``):

- int8  weight-only, INT8_ASYM per output channel (MatMul, Convolution, embeddings).
- int4  weight-only, INT4_SYM in groups of ``group_size`` (default 128) on a ``ratio``
        (default 1.0) of the layers; NNCF keeps the rest, and layers whose width the
        group does not divide, in int8 (its "backup" precision).
- nf4   weight-only, NormalFloat4 in groups, with the same ratio and backup rule.
- int8-static  the UNet's weights *and* activations in int8 (nncf.quantize, with
        activation ranges calibrated on UNet inputs recorded while the source artifact
        generates from a prompt set), and the VAE decoder's too when it is among the
        components (calibrated on the final latents of the same generations); the other
        components get int8 weights. This is the scheme that makes the CPU run int8
        kernels: weight-only compression saves memory and bandwidth but computes in
        floating point.

int8-static on CPUs without an int8 dot product (no VNNI or AMX: AVX2, and AVX-512 before
Cascade Lake) runs u8 x s8 through vpmaddubsw, whose pairwise sums saturate at 16 bits: NNCF's
"overflow fix" quantizes weights to 7 bits so they cannot. Its default fixes the first layer
only, which cost the SDXL toy 4.3 dB on an AVX2 CPU (33.4 dB against 37.7 with every layer
fixed, 39.3 with first-layer on a VNNI CPU); so sdopt's default (``overflow_fix="auto"``)
fixes every layer where the quantizing CPU lacks the dot product, and follows NNCF
elsewhere. The choice and its reason are recorded; loading an artifact quantized without
the fix on such a CPU warns.

The artifact stays an OpenVINO artifact of the source's precision: its hint
applies to what is not int8. Calibration runs at the artifact's static shapes,
or else at the model's native size.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import openvino as ov

from sdopt.errors import SdoptError, exception_line
from sdopt.quant.schemes import OVERFLOW_FIXES
from sdopt.input_images import image_files
from sdopt.manifest import Manifest
from sdopt.quant import Plan, QuantizedComponents
from sdopt.quant.engine import Engine, quantized_entry
from sdopt.quant.calibration import (CALIBRATED, CALIBRATION_PROMPTS, calibration_prompts as _calibration_prompts, calibration_record,
                                     check_decoder_schedulers, record_inputs)
from sdopt.quant.inpainting_calibration import check_calibration_images, inpainting_record
from sdopt.quant.schemes import Capability
from sdopt.runtime.openvino import MODEL_FILE, model_file

DEFAULT_GROUP_SIZE = 128
DEFAULT_RATIO = 1.0


@dataclass(frozen=True)
class NncfOptions:
    group_size: int | None = None
    ratio: float | None = None
    calibration_prompts: tuple[str, ...] | None = None
    calibration_schedulers: tuple[str, ...] | None = None  # the decoder's runs alone (None: the checkpoint's + DECODER_SCHEDULERS)
    overflow_fix: str | None = None  # one of OVERFLOW_FIXES; None: auto (choose_overflow_fix)
    calibration_images: tuple[str, ...] | None = None  # image files an inpainting checkpoint repaints while calibrating

    @classmethod
    def from_plan(cls, plan) -> "NncfOptions":
        """The backend options of a quantize request (Plan.options; the quantize command refused any other)."""
        options = dict(getattr(plan, "options", None) or {})
        prompts, schedulers, images = (options.get(k) for k in ("calibration_prompts", "calibration_schedulers", "calibration_images"))
        return cls(options.get("group_size"), options.get("ratio"), _calibration_prompts(prompts) if prompts is not None else None,
                   tuple(schedulers) if schedulers is not None else None, options.get("overflow_fix"),
                   image_files(images, "--calibration-images") if images is not None else None)


def choose_overflow_fix(option: str | None) -> tuple[str, str]:
    """The overflow fix int8-static applies (a key of OVERFLOW_FIXES) and why."""
    if option not in (None, "auto"):
        return option, "asked for (--overflow-fix)"
    from sdopt.hardware import int8_overflow_by_cpu

    overflows, why = int8_overflow_by_cpu()
    return ("enable", why) if overflows else ("first-layer", f"{why}; NNCF's default")


def quantize_openvino(
    artifact: str | Path,
    scheme: str,
    out: str | Path,
    force: bool = False,
    group_size: int | None = None,
    ratio: float | None = None,
    calibration_prompts: str | Path | list[str] | None = None,
    components: list[str] | None = None,
    calibration_schedulers: list[str] | None = None,
    overflow_fix: str | None = None,
    calibration_images: str | Path | list[str | Path] | None = None,
) -> Manifest:
    """Quantize an OpenVINO artifact with NNCF into ``out``; the Python form of
    ``sdopt quantize ARTIFACT --backend nncf --scheme ...``. calibration_prompts: a file
    with one prompt per line, or a list of prompts (int8-static only); calibration_schedulers: the
    schedulers the VAE decoder alone is calibrated on, in turn (int8-static with the decoder);
    overflow_fix: auto (default), enable, first-layer or disable (int8-static; see the module's docstring);
    calibration_images: a folder of images or a list of image files, which an inpainting checkpoint
    (and only one) needs to calibrate on (``check_calibration_images``, ``calibration_mask``)."""
    from sdopt.quant.run import quantize

    options: dict[str, Any] = {k: v for k, v in (("group_size", group_size), ("ratio", ratio)) if v is not None}
    if calibration_prompts is not None:
        # Recorded in the manifest as the prompts themselves: a file path would say nothing later.
        options["calibration_prompts"] = list(_calibration_prompts(calibration_prompts))
    if calibration_schedulers is not None:
        options["calibration_schedulers"] = list(calibration_schedulers)
    if overflow_fix is not None:
        options["overflow_fix"] = overflow_fix
    if calibration_images is not None:
        options["calibration_images"] = list(image_files(calibration_images, "--calibration-images"))
    return quantize(artifact, scheme, out, backend="nncf", components=components, force=force, options=options)


def check_options(capability: Capability, options: NncfOptions) -> None:
    scheme = capability.scheme
    weight_4bit = scheme in ("int4", "nf4")
    for flag, value in (("--group-size", options.group_size), ("--ratio", options.ratio)):
        if value is not None and not weight_4bit:
            raise SdoptError(f"{flag} applies to int4 and nf4 (4-bit weights in groups), not {scheme}")
    if options.group_size is not None and options.group_size < 1 and options.group_size != -1:
        raise SdoptError(f"--group-size {options.group_size}: give a positive group size (128 is usual), or -1 for one scale per channel")
    if options.ratio is not None and not 0 < options.ratio <= 1:
        raise SdoptError(f"--ratio {options.ratio}: give the fraction of layers in 4 bits, 0 < ratio <= 1 (the rest int8)")
    for flag, value in (("--calibration-prompts", options.calibration_prompts), ("--calibration-schedulers", options.calibration_schedulers),
                        ("--overflow-fix", options.overflow_fix), ("--calibration-images", options.calibration_images)):
        if value is not None and not capability.calibrated:
            raise SdoptError(f"{flag} applies to int8-static only: {scheme} compresses weights without data")
    if options.overflow_fix not in (None, "auto", *OVERFLOW_FIXES):
        raise SdoptError(f"--overflow-fix {options.overflow_fix}: give auto, {', '.join(OVERFLOW_FIXES)}")


@contextmanager
def nncf_output(progress: bool) -> Iterator[None]:
    """NNCF draws its progress bars on rich's console and logs its tables through a handler, both on stdout,
    where sdopt's commands print their result (the artifact's summary): while it works here they go to
    stderr, as sdopt's own bars do, and without progress only NNCF's warnings show."""
    import logging

    import rich
    from nncf.common.logging.logger import nncf_logger

    console = rich.get_console()  # what NNCF's track() draws on: it passes no console of its own
    # None again afterwards where the console followed sys.stdout (it follows a replaced sys.stdout, as under pytest)
    kept_file, kept_quiet = (None if console.file is sys.stdout else console.file), console.quiet
    # NNCF's handler holds the sys.stdout of when nncf was imported: swapped for one on stderr (never written to or flushed here).
    handlers = list(nncf_logger.handlers)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.INFO if progress else logging.WARNING)
    to_stderr.setFormatter(next((h.formatter for h in handlers if type(h) is logging.StreamHandler), None))
    nncf_logger.handlers = [h for h in handlers if type(h) is not logging.StreamHandler] + [to_stderr]
    console.file, console.quiet = sys.stderr, not progress
    try:
        yield
    finally:
        console.file, console.quiet = kept_file, kept_quiet
        nncf_logger.handlers = handlers


class NncfEngine(Engine):
    def check_plan(self, source: Path, manifest: Manifest, plan: Plan) -> None:
        if plan.exclude:  # it would be recorded as applied and change nothing: NNCF sees the graphs, not these names
            raise SdoptError("--exclude names PyTorch layers (unet.conv_in), and --backend nncf quantizes OpenVINO graphs, "
                             "where those names do not exist: leave it out, or keep a whole component in full precision with --components")
        options = NncfOptions.from_plan(plan)
        check_options(plan.capability, options)
        check_decoder_schedulers(options.calibration_schedulers, plan.components)
        if plan.capability.calibrated and set(CALIBRATED) & set(plan.components):
            check_calibration_images(source, manifest, options.calibration_images)

    def quantize_components(self, source: Path, manifest: Manifest, out: Path, plan: Plan) -> QuantizedComponents:
        with nncf_output(plan.progress):
            return self._quantize_components(source, manifest, out, plan)

    def _quantize_components(self, source: Path, manifest: Manifest, out: Path, plan: Plan) -> QuantizedComponents:
        import nncf

        options = NncfOptions.from_plan(plan)
        prompts = options.calibration_prompts or CALIBRATION_PROMPTS
        wanted = [n for n in CALIBRATED if n in plan.components]  # every calibrated component records in one pass
        core = ov.Core()
        # Keep the source's weight storage for what stays float: fp16 unless the source is an fp32 artifact.
        compress_to_fp16 = (manifest.export or {}).get("weights", "fp16") == "fp16"
        calibration: dict[str, list[dict[str, np.ndarray]]] | None = None
        entries, notes = {}, []
        overflow_fix = choose_overflow_fix(options.overflow_fix) if plan.capability.calibrated else None
        inpainting = inpainting_record(options.calibration_images) if options.calibration_images else None  # hashed once, for every recipe
        for name in plan.components:
            entry = manifest.components[name]
            model = core.read_model(source / model_file(entry.files, name))
            if plan.capability.calibrated and name in CALIBRATED:
                if calibration is None:  # one pass of generations records every calibrated component's inputs
                    calibration = record_inputs(source, prompts, wanted, options.calibration_schedulers, options.calibration_images,
                                                progress=plan.progress)
                model, recipe = _quantize_static(nncf, model, calibration[name], overflow_fix=overflow_fix[0])
                recipe["overflow_fix"] = {"mode": overflow_fix[0], "why": overflow_fix[1]}
                recipe["calibration"] = calibration_record(prompts, options.calibration_prompts is None, wanted, name,
                                                           options.calibration_schedulers, len(calibration[name]), inpainting)
            else:
                # int8-static calibrates the UNet (and the VAE decoder when asked); the others get int8 weights, and say so.
                applied = "int8" if plan.scheme == "int8-static" else plan.scheme
                model, recipe = _compress_weights(nncf, model, applied, options, name)
            path = out / entry.folder / MODEL_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, path, compress_to_fp16=compress_to_fp16)
            del model
            entries[name] = quantized_entry(source, out, entry, (".xml", ".bin", ".json"),
                                            {"scheme": recipe.pop("scheme"), "backend": "nncf", "serialized": True, **recipe})
        if plan.scheme == "int8-static" and not set(CALIBRATED) & set(plan.components):
            notes.append("int8-static calibrates the UNet's and VAE decoder's activations; without either only weights were compressed (int8)")
        return QuantizedComponents(components=entries, notes=notes)


_WEIGHT_MODES = {"int8": "INT8_ASYM", "int4": "INT4_SYM", "nf4": "NF4"}


def _compress_weights(nncf, model: ov.Model, scheme: str, options: NncfOptions, component: str = "this model") -> tuple[ov.Model, dict[str, Any]]:
    mode = _WEIGHT_MODES[scheme]
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, mode)}
    recipe: dict[str, Any] = {"scheme": scheme, "mode": mode.lower(), "weights_only": True}
    if scheme in ("int4", "nf4"):
        kwargs["group_size"] = options.group_size or DEFAULT_GROUP_SIZE
        kwargs["ratio"] = options.ratio if options.ratio is not None else DEFAULT_RATIO
        # Layers narrower than a group, or not a multiple of it, get the largest group size that
        # divides them (at least 32) instead of failing the whole model; NNCF logs which.
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        kwargs["advanced_parameters"] = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
        recipe.update(group_size=kwargs["group_size"], ratio=kwargs["ratio"], group_size_fallback="adjust", backup="int8_asym")
    else:
        recipe["granularity"] = "per output channel"
    try:
        compressed = nncf.compress_weights(model, **kwargs)
    except (nncf.InvalidGroupSizeError, nncf.ValidationError, nncf.ParameterNotSupportedError) as exc:
        raise SdoptError(f"NNCF refused {scheme} with these options: {exception_line(exc)}") from exc
    recipe["layers"] = _count_compressed(compressed)
    if scheme in ("int4", "nf4") and kwargs["group_size"] != -1:
        # What the fallback chose, not only what was asked: NNCF gives a layer whose width the group size does not
        # divide a size of its own, so --group-size 7 (or 100000) was recorded as applied while no group had that size.
        used = _group_sizes(compressed)
        recipe["group_sizes"] = {str(size): count for size, count in sorted(used.items())}
        if used and kwargs["group_size"] not in used:
            # Named per component: the default 128 fits sd15's UNet but no layer of a 32-wide text encoder, and a
            # warning without the name read as if the whole model had ignored it (tiny: the UNet used 128 on 18 layers).
            warnings.warn(f"--group-size {kwargs['group_size']} divides no layer's width in {component}: NNCF's fallback grouped its "
                          f"4-bit weights by {', '.join(str(k) for k in sorted(used))} instead (a power of two such as 32, 64 or 128 fits "
                          "most layers)", UserWarning, stacklevel=2)
    return compressed, recipe


def _quantize_static(nncf, model: ov.Model, samples: list[dict[str, np.ndarray]], advanced_parameters=None,
                     overflow_fix: str = "first-layer") -> tuple[ov.Model, dict[str, Any]]:
    """sdopt's int8-static recipe; ``advanced_parameters`` (NNCF's) only for measuring alternatives to it (measure/),
    where an overflow fix of their own wins over ``overflow_fix``."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    advanced = advanced_parameters or AdvancedQuantizationParameters()
    if advanced.overflow_fix is None:
        advanced = dataclasses.replace(advanced, overflow_fix=OverflowFix[OVERFLOW_FIXES[overflow_fix]])
    extra = {"advanced_parameters": advanced}
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,  # keeps softmax/norm inputs in float, quantizes the attention matmuls' inputs
        preset=nncf.QuantizationPreset.MIXED,  # symmetric weights, asymmetric activations (SiLU/GELU outputs are skewed)
        subset_size=len(samples),
        **extra,
    )
    recipe = {"scheme": "int8-static", "mode": "int8 weights and activations", "weights_only": False, "preset": "mixed", "model_type": "transformer", "layers": _count_fake_quantize(quantized)}
    if symmetric := symmetric_transposed_conv_inputs(quantized):
        recipe["symmetric_inputs"] = {"transposed convolutions": symmetric}
    return quantized, recipe


TRANSPOSED_CONVOLUTIONS = ("ConvolutionBackpropData", "GroupConvolutionBackpropData")


def symmetric_transposed_conv_inputs(model: ov.Model) -> int:
    """Widen the asymmetric activation ranges NNCF put before transposed convolutions to symmetric ones; how many.

    OpenVINO's CPU plugin runs a transposed convolution in int8 only when its input is quantized
    symmetrically (its low-precision pass leaves asymmetric ones to a float kernel: the rewritten
    VAE decoder's upsamplers ran in bf16, 19% of the int8 decoder's time). The inputs here are the
    decoder's residual stream, whose ranges are already symmetric within a few percent (sd15:
    -86.8..87.4, -54.1..54.5, -19.9..19.2), so widening costs at most a sliver of one bit; measured
    on sd15 at 256²: the decoder 520 -> 474 ms, its PSNR against the float decoder unchanged to 0.03 dB
    (docs/optimize.md). A FakeQuantize with other consumers is widened for them too: one range per tensor.
    """
    widened = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() not in TRANSPOSED_CONVOLUTIONS:
            continue
        fq = op.input(0).get_source_output().get_node()
        if fq.get_type_name() != "FakeQuantize" or fq.get_attributes()["levels"] != 256 or fq.get_friendly_name() in widened:
            continue
        ranges = [fq.input(i).get_source_output().get_node() for i in range(1, 5)]
        if any(r.get_type_name() != "Constant" for r in ranges):
            continue
        low, high = (r.get_data().astype(np.float32) for r in ranges[:2])
        bound = np.maximum(np.abs(low), np.abs(high))
        # int8's grid: -128..127 steps of bound/128, so the symmetric range is [-bound, bound * 127/128]
        for port, value in zip(range(1, 5), (-bound, bound * 127 / 128, -bound, bound * 127 / 128)):
            fq.input(port).replace_source_output(ov.op.Constant(np.array(value, dtype=np.float32)).output(0))
        widened.add(fq.get_friendly_name())
    return len(widened)


def _count_compressed(model: ov.Model) -> int:
    """The weights NNCF compressed: constants of 8 or fewer bits that are a decompression's data (Convert into the
    first input of its Subtract or Multiply), not its zero points (the second input of the Subtract)."""
    small = {"u8", "i8", "u4", "i4", "nf4"}
    count = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type().to_string() not in small:
            continue
        converts = [t.get_node() for t in op.output(0).get_target_inputs() if t.get_node().get_type_name() == "Convert"]
        if any(t.get_index() == 0 and t.get_node().get_type_name() in ("Subtract", "Multiply")
               for convert in converts for t in convert.output(0).get_target_inputs()):
            count += 1
    return count


def _group_sizes(model: ov.Model) -> dict[int, int]:
    """{group size: weights} of the 4-bit weights compressed in groups (NNCF stores them (outputs, groups, size))."""
    sizes: dict[int, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type().to_string() in ("u4", "i4", "nf4") and len(op.get_shape()) == 3:
            size = int(op.get_shape()[-1])
            sizes[size] = sizes.get(size, 0) + 1
    return sizes


def _count_fake_quantize(model: ov.Model) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
