"""The OpenVINO backend: one compiled model per component, compiled for the artifact's shapes.

Three things are explicit here that OpenVINO would otherwise decide silently:

- Precision. The manifest's precision becomes INFERENCE_PRECISION_HINT. Left
  unset, OpenVINO's CPU plugin runs bf16 on any CPU with AVX512-BF16 or AMX,
  which changes the images; where the hardware cannot honour the hint it runs
  f32 instead. Either way we read back what the compiled model actually runs
  (``Component.runs``) and warn when it differs from what was asked.
- Shapes. A static artifact (manifest.static_shapes) is reshaped to its shapes
  before compiling: on CPU that is much faster than a dynamic graph. Classifier-
  free guidance doubles the UNet batch, so the UNet is compiled for 2 x batch;
  a call with another batch (guidance off) or, with the ``reshape`` load
  option, another size is compiled once for that shape on first use.
- The compiled-model cache. OpenVINO's CACHE_DIR lives under one per-user
  folder (``cache_dir()``), so the second load of an artifact imports the
  compiled blob instead of compiling again.

Devices: sdopt's torch-style names map onto OpenVINO's ("cpu" -> CPU, "gpu",
"npu", "auto", "auto:gpu,cpu"); "openvino:NAME" passes any OpenVINO device
string through unchanged (openvino:GPU.1, openvino:HETERO:GPU,CPU).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from sdopt.errors import SdoptError, argument, did_you_mean, exception_line
from sdopt.file_reading import user_cache_dir
from sdopt.hash_records import vouched
from sdopt.manifest import Manifest
from sdopt.runtime.executor import to_rank
from sdopt.runtime.int8_saturation import warn_if_int8_may_saturate

MODEL_FILE = "openvino_model.xml"
WEIGHTS_FILE = "openvino_model.bin"
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_SDOPT_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
# Cast each input to what the graph takes: Optimum's exports may take int32 ids or int64 timesteps.
_NUMPY = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32}


# --- where, on what, in which precision -----------------------------------------
def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Per-user folder for compiled models: $SDOPT_CACHE_DIR/openvino, else $XDG_CACHE_HOME/sdopt/openvino,
    else ~/.cache/sdopt/openvino."""
    return Path(override).expanduser() if override else user_cache_dir() / "openvino"


def core(cache: Path | None, required: bool = True) -> ov.Core:
    """OpenVINO's Core, compiling into ``cache``. A cache folder that cannot be made is an error where it was asked
    for (SDOPT_CACHE_DIR, cache_dir=); the default one (under XDG_CACHE_HOME or HOME, read-only on many servers) only
    speeds loads up, so without it the models run uncached, with one warning: it stopped generate and serve."""
    c = ov.Core()
    if cache is not None:
        existed = cache.is_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            # A folder that exists but takes no files (read-only, another user's): OpenVINO then compiled at every load
            # without a word, where one that could not be made was an error or a warning. Tried with a file, removed.
            handle, probe = tempfile.mkstemp(prefix=".sdopt-probe-", dir=cache)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            what = "write in" if existed else "create"
            if required:
                raise SdoptError(f"cannot {what} the OpenVINO cache folder {cache} ({exc}); set SDOPT_CACHE_DIR to a writable folder") from exc
            warnings.warn(f"cannot {what} the OpenVINO cache folder {cache} ({exc.strerror or exc}): the models are compiled "
                          "at every load; set SDOPT_CACHE_DIR to a writable folder to keep them", stacklevel=2)
            return c
        c.set_property({"CACHE_DIR": str(cache)})
    return c


def _openvino_name(device: str) -> str:
    """sdopt's device string -> OpenVINO's ("cpu" -> "CPU"; "openvino:NAME" passes NAME through)."""
    return device.split(":", 1)[1] if device.lower().startswith("openvino:") else device.upper()


def openvino_device(device: str, c: ov.Core) -> str:
    """sdopt's device string -> OpenVINO's, checked against what this machine has."""
    name = _openvino_name(device)
    available = list(c.available_devices)
    base = name.split(":", 1)[0].split(".", 1)[0]
    if base not in _VIRTUAL_DEVICES and not any(d == name or d.split(".", 1)[0] == name for d in available):
        described = ", ".join(f"{d} ({_device_name(c, d)})" for d in available) or "none"
        # the devices this machine has, as sdopt names them: "or gpu, npu" suggested one it had just been refused
        here = [*dict.fromkeys(d.split(".", 1)[0].lower() for d in available), "auto"]
        raise SdoptError(
            f"OpenVINO has no device '{name}' on this machine; available: {described}. "
            f"Pass {' or '.join(argument('device', d) for d in here)} (openvino:NAME for any other OpenVINO device string)"
        )
    return name


def check_device(device: str) -> None:
    """Refuse a device this machine lacks (sdopt.runtime.load asks before its precision advice)."""
    openvino_device(device, ov.Core())


def _device_name(c: ov.Core, device: str) -> str:
    try:
        return str(c.get_property(device, "FULL_DEVICE_NAME")).strip()
    except RuntimeError:
        return "?"


# What a run's speed depends on, read back from each compiled model into the bench report.
REPORTED_PROPERTIES = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
                       "ENABLE_HYPER_THREADING", "ENABLE_CPU_PINNING", "SCHEDULING_CORE_TYPE")


def compile_config(precision: str, threads: int | None = None, run_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenVINO properties for compile_model: the artifact's precision, the latency hint (one image
    at a time), and ``run_settings`` (a profile's [run.openvino]: any OpenVINO property) over them."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    for key, value in (run_settings or {}).items():
        if key == "INFERENCE_PRECISION_HINT":
            raise SdoptError("run settings cannot set INFERENCE_PRECISION_HINT: the artifact's precision decides it "
                             "(export again with --precision)")
        if not isinstance(key, str) or not key.isupper():
            raise SdoptError(f"OpenVINO run setting {key!r}: give OpenVINO property names, such as PERFORMANCE_HINT or NUM_STREAMS")
        config[key] = value if isinstance(value, (int, float)) else str(value)
    return config


# Properties compile_model takes that OpenVINO's core handles, not the device's plugin (the plugin does not list them).
CORE_PROPERTIES = ("CACHE_DIR", "CACHE_MODE", "ENABLE_MMAP", "FORCE_TBB_TERMINATE")


def check_run_settings(settings: dict[str, Any], device: str) -> None:
    """A profile's [run.openvino], checked when the profile is read (not when the bench reaches an OpenVINO entry): each
    name one the device's plugin has and each value one it takes, by setting them on a Core of their own. A device
    this machine lacks is left to the load (a profile may be read on another machine than it is for)."""
    config = compile_config("fp32", None, settings)  # the names' form, and no precision hint
    target = _openvino_name(device)
    c = ov.Core()
    if target not in c.available_devices:
        return
    supported = set(c.get_property(target, "SUPPORTED_PROPERTIES"))  # loads the plugin: set_property checks from here on
    for key, value in settings.items():
        if key in CORE_PROPERTIES:  # OpenVINO's own, not the plugin's: it takes any name there, and checks the value
            try:
                c.set_property({key: config[key]})
            except RuntimeError as exc:
                raise SdoptError(f"OpenVINO does not take {key} = {value!r}: {_reason(exc)}") from None
            continue
        if key not in supported:
            raise SdoptError(f"OpenVINO's {target} plugin has no property {key}{did_you_mean(key, supported)}"
                             "; its run settings are such as PERFORMANCE_HINT, NUM_STREAMS, INFERENCE_NUM_THREADS, ENABLE_CPU_PINNING")
        _refuse_a_part_of_a_whole(c, target, key, value)
        try:
            c.set_property(target, {key: config[key]})
        except RuntimeError as exc:
            raise SdoptError(f"OpenVINO's {target} plugin does not take {key} = {value!r}: {_reason(exc)}") from None


def _refuse_a_part_of_a_whole(core: ov.Core, target: str, key: str, value: Any) -> None:
    """A whole-number property (NUM_STREAMS, INFERENCE_NUM_THREADS: their value is an int) given 1.5 or "": OpenVINO
    takes both without a word and runs 1 for the first, its default for the second. Words (NUM_STREAMS = "AUTO") are
    left to OpenVINO to judge."""
    default = core.get_property(target, key)
    if isinstance(default, bool) or not isinstance(default, int):
        return
    text = str(value).strip()
    try:
        int(text)
        return
    except ValueError:
        pass
    try:
        number = float(text) if text else math.nan
    except ValueError:
        return  # a word
    runs = int(number) if math.isfinite(number) else "its default"
    raise SdoptError(f"OpenVINO's {target} plugin takes a whole number for {key}, not {value!r} (it would run {runs} without "
                     "saying so): give one, such as 1 or 2")


def read_properties(compiled: ov.CompiledModel, names: tuple[str, ...] = REPORTED_PROPERTIES) -> dict[str, str]:
    """Each property the compiled model answers, as text (virtual devices answer fewer)."""
    out = {}
    for name in names:
        try:
            value = compiled.get_property(name)
        except RuntimeError:
            continue
        out[name] = value.to_string() if hasattr(value, "to_string") else str(value)
    return out


def runs_precision(compiled: ov.CompiledModel) -> str:
    """The precision the compiled model runs, asked of the compiled model itself ("unknown" where it
    does not answer: virtual devices such as AUTO)."""
    name = read_properties(compiled, ("INFERENCE_PRECISION_HINT",)).get("INFERENCE_PRECISION_HINT")
    return "unknown" if name is None else _SDOPT_NAMES.get(name, name)


# Layers whose multiply-adds are the FLOPs the bench counts: the precision they run is the one a stage computes in.
_COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})
_INT8 = frozenset({"u8", "i8"})
_LOW_BIT_WEIGHTS = frozenset({"u8", "i8", "u4", "i4"})


def computes_precision(compiled: ov.CompiledModel, runs: str) -> str:
    """What the compiled graph's convolutions and matmuls compute in: "int8" where most of them multiply
    int8 activations, else ``runs`` (the float precision). int8 activations come from NNCF int8-static
    (the layer's input is u8/i8 in the runtime graph), but also from int8 *weights* alone: the CPU plugin
    quantizes a compressed FullyConnected layer's activations on the fly ("dynamic quantization") when its
    input is f32, DYNAMIC_QUANTIZATION_GROUP_SIZE is a non-zero multiple of 16 (32 by default) and the
    CPU has VNNI (the plugin's DnnlFCPrimitive::useDynamicQuantizationImpl; its runtime graph does not
    show it: such a layer reads "u8" for its weights either way). The bench compares each stage with this
    precision's matmul ceiling."""
    from sdopt.hardware import cpu_lacks_int8_dot

    try:
        group = int(read_properties(compiled, ("DYNAMIC_QUANTIZATION_GROUP_SIZE",)).get("DYNAMIC_QUANTIZATION_GROUP_SIZE", 0))
    except ValueError:
        group = 0
    dynamic = group > 0 and group % 16 == 0 and not cpu_lacks_int8_dot()
    try:
        layers = []
        for op in compiled.get_runtime_model().get_ops():
            kind = op.get_rt_info()["layerType"].astype(str)
            if kind in _COMPUTE_LAYERS:
                types = [i.get_element_type().get_type_name() for i in op.inputs()]
                layers.append((kind, types[0], types[1] if len(types) > 1 else ""))
    except (RuntimeError, KeyError, AttributeError):  # a device (or virtual device) without a runtime graph
        return runs
    return dominant_precision(layers, runs, dynamic)


def dominant_precision(layers: list[tuple[str, str, str]], runs: str, dynamic: bool) -> str:
    """``computes_precision``'s decision over (layer type, activation type, weight type) triples;
    ``dynamic``: the plugin quantizes a compressed FullyConnected layer's f32 activations itself."""
    def int8(kind: str, activations: str, weights: str) -> bool:
        return activations in _INT8 or (dynamic and kind == "FullyConnected" and activations == "f32" and weights in _LOW_BIT_WEIGHTS)

    count = sum(int8(*layer) for layer in layers)
    return "int8" if layers and 2 * count > len(layers) else runs


def device_facts(c: ov.Core, device: str) -> dict[str, Any]:
    base = device.split(":", 1)[0]
    facts: dict[str, Any] = {"device": device, "name": _device_name(c, base)}
    try:
        facts["capabilities"] = list(c.get_property(base, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        pass
    return facts


# --- shapes ------------------------------------------------------------------------
def static_axes(manifest: Manifest, component: str) -> dict[str, dict[int, int]]:
    """input name -> {axis: size} for a static artifact, from manifest.static_shapes.

    batch in static_shapes counts images per request (as Pipeline.check_request
    does). Guidance doubles the UNet batch (not an LCM-distilled UNet's); the text encoder's batch is prompts
    plus negatives, unknown here, so it stays dynamic (it runs once per request).
    """
    shapes = manifest.static_shapes or {}
    model = manifest.model
    factor = int(model.get("vae_scale_factor", 8))
    sizes: dict[str, int] = {"sequence_length": int(model.get("text_max_length", 77))}
    batch = shapes.get("batch")
    if batch and component in ("unet", "unet_shallow"):
        from sdopt.runtime.embedded_guidance import embeds_guidance

        sizes["batch_size"] = batch if embeds_guidance(model) else 2 * batch  # an LCM UNet runs unguided (its guidance is an input)
    elif batch and component in ("vae_decoder", "vae_encoder"):
        sizes["batch_size"] = batch
    pixel = component == "vae_encoder"
    for side in ("height", "width"):
        if shapes.get(side):
            sizes[side] = shapes[side] if pixel else shapes[side] // factor
    entry = manifest.components[component]
    axes: dict[str, dict[int, int]] = {}
    for spec in entry.inputs:
        fixed = {int(a): sizes[n] for a, n in (spec.get("dynamic_axes") or {}).items() if n in sizes}
        if fixed:
            axes[spec["name"]] = fixed
    return axes


# --- the executor --------------------------------------------------------------------
CACHE_RACE_TRIES = 3  # compiles of one component, while each fails on its blob in the shared cache (_compile_cached)


def _reason(exc: Exception) -> str:
    """The line of an OpenVINO exception that says what is wrong: its messages start with the C++ source location
    ("Exception from src/inference/src/cpp/core.cpp:84:") and put the reason below."""
    return exception_line(exc, skip=("Exception from", "Check '"))


class OpenVINOComponent:
    """One component: compiled models by input shape, and the precision each really runs."""

    def __init__(self, c: ov.Core, path: Path, device: str, config: dict[str, Any], axes: dict[str, dict[int, int]],
                 verified: bool = False):
        """``verified``: every file of the IR is, by its hash record, the one its manifest's sha256 names (see _compile)."""
        self.core, self.path, self.device, self.config, self.verified = c, path, device, config, verified
        self._compiled: list[tuple[dict[str, ov.PartialShape], ov.CompiledModel, ov.InferRequest]] = []
        self._lock = threading.Lock()
        model = self._read()
        self.input_types = {p.get_any_name(): p.get_element_type().to_string() for p in model.inputs}
        self.input_ranks = {p.get_any_name(): p.get_partial_shape().rank.get_length() for p in model.inputs if p.get_partial_shape().rank.is_static}
        self.output_names = [o.get_any_name() for o in model.outputs]
        shapes = {}
        for p in model.inputs:
            shape = p.get_partial_shape()
            for axis, size in axes.get(p.get_any_name(), {}).items():
                shape[axis] = ov.Dimension(size)
            shapes[p.get_any_name()] = shape
        self._compile(model, shapes)
        self.runs = runs_precision(self._compiled[0][1])
        self.settings = read_properties(self._compiled[0][1])

    @functools.cached_property
    def computes(self) -> str:
        """``computes_precision`` of the first compiled shape: asked when a bench reads it, not at every load
        (it walks the runtime graph: ~45 ms for sd15's UNet)."""
        return computes_precision(self._compiled[0][1], self.runs)

    def kernels(self) -> set[str]:
        """The kernels OpenVINO chose, over every shape compiled: each runtime node's primitive type, which names the CPU
        path that ran (``brgconv_avx512_I8``, ``jit_avx2_I8``); for a dynamic shape, known once it has run."""
        return {node.get_rt_info()["primitiveType"].astype(str) for _, compiled, _ in self._compiled
                for node in compiled.get_runtime_model().get_ops()}

    def _read(self) -> ov.Model:
        try:
            return self.core.read_model(self.path)
        except RuntimeError as exc:
            raise SdoptError(f"OpenVINO cannot read {self.path}: {_reason(exc)}; export the artifact again") from exc

    def _compile(self, model: ov.Model, shapes: dict[str, ov.PartialShape]) -> None:
        reshaped = any(shapes[p.get_any_name()] != p.get_partial_shape() for p in model.inputs)
        if reshaped:
            model.reshape(shapes)
        # A model as it is on disk is compiled from its file, not from the ov.Model read (read_model maps the weights
        # lazily: reading is cheap): with the cache, OpenVINO then keys the blob on the file and imports it without
        # touching the IR, where for a model object it hashed the model, every page of the IR mapped. sd15 fp32, cached
        # (2-core AMD EPYC, OpenVINO 2026.4.1): sdopt.load peaked at 5.2 GB RSS, not 8.0 GB (IR and blob both mapped),
        # in 2.3-10.0 s against 3.6-7.8 s (a shared machine: no clear difference); the generate after it peaks at
        # 8.7 GB either way (docs/openvino.md "Memory"). OpenVINO keys on the .xml alone: a .bin replaced under an
        # unchanged .xml imported the old blob, the old weights. So only where the files are, by their hash records,
        # the ones the manifest's sha256 name (an sdopt artifact, verified; not an Optimum folder, nor a file changed
        # since its last check). A reshaped model has no file to compile from.
        source: ov.Model | str = str(self.path) if self.verified and not reshaped else model
        try:
            compiled = self._compile_cached(source)
        except (RuntimeError, TypeError) as exc:  # TypeError: a run setting of a type the property does not take
            from sdopt.hardware import onednn_isa_cap

            # OpenVINO's bf16 and weight-compressed layers then fail (docs/cpu-features.md); capped at SSE41, fp32 ones too
            # ("bad combination"). DNNL_MAX_CPU_ISA, oneDNN's older name, caps alike.
            cap = onednn_isa_cap()
            none_at_all = " (capped below AVX: no layers at all)" if cap and cap.level == "SSE41" else ""
            hint = f"; {cap} is set, under which OpenVINO compiles no bf16 or weight-compressed layers{none_at_all}: unset it" if cap else ""
            raise SdoptError(f"OpenVINO could not compile {self.path.parent.name} for {self.device}: {_reason(exc)}{hint}") from exc
        self._compiled.append((shapes, compiled, compiled.create_infer_request()))

    def _compile_cached(self, model: ov.Model | str, tries: int = CACHE_RACE_TRIES) -> ov.CompiledModel:
        """compile_model, again when it lost a race for its blob in a cache folder other processes share: OpenVINO
        removes a blob it finds half-written (another process's, writing it now), and the writer then fails on its own
        blob ("filesystem error: cannot set permissions: No such file or directory [CACHE/N.blob]"): three generates of
        one artifact started together into an empty cache, one exited 2 saying OpenVINO "could not compile" it."""
        for _ in range(tries - 1):
            try:
                return self.core.compile_model(model, self.device, self.config)
            except RuntimeError as exc:
                cache = str(self.core.get_property("CACHE_DIR") or "")
                if not cache or "filesystem error" not in str(exc) or cache not in str(exc):
                    raise
        return self.core.compile_model(model, self.device, self.config)

    def _request_for(self, feed: dict[str, np.ndarray]) -> ov.InferRequest:
        for shapes, _, request in self._compiled:
            if all(shapes[k].compatible(ov.PartialShape(list(v.shape))) for k, v in feed.items()):
                return request
        # A static component met a shape it was not compiled for (guidance off, or the reshape
        # option): compile once for exactly this shape. The cache makes it cheap the next time.
        self._compile(self._read(), {k: ov.PartialShape(list(v.shape)) for k, v in feed.items()})
        return self._compiled[-1][2]

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        return to_rank(np.ascontiguousarray(array, dtype=_NUMPY.get(self.input_types.get(name, ""), None)), self.input_ranks.get(name))

    def __call__(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        feed = {k: self._feed(k, v) for k, v in arrays.items() if k in self.input_types}
        with self._lock:  # one infer request per compiled shape: calls on one component are serial
            request = self._request_for(feed)
            request.infer(feed)
            # Copies: the request reuses its output buffers on the next call. By position, not name: a
            # compiled graph may lose an output's tensor name where two names met (seen on Optimum's
            # SDXL text encoders), and outputs keep the model's order.
            return {n: np.array(request.get_output_tensor(i).data, dtype=np.float32) for i, n in enumerate(self.output_names)}

    def close(self) -> None:
        self._compiled = []


def crash_under_the_cap() -> str | None:
    """Why OpenVINO may crash this process, where a oneDNN cap hides this CPU's AVX-512; None where none does.
    Measured with OpenVINO 2026.4 on an AVX-512 AMD EPYC (Zen 4), ONEDNN_MAX_CPU_ISA=AVX2, AVX2_VNNI or AVX (AVX512_CORE
    ran): the tiny fp32 UNet segfaults (rc 139, no message) where its latent is 12x10, 12x12 or 10x10, and runs at 8x8,
    16x16, 12x16 and 24x24; so every fp32 export, whose check runs 12x10, and `generate --height 96 --width 80`."""
    from sdopt.hardware import avx512_hidden_by_cap

    cap = avx512_hidden_by_cap()
    if cap is None:
        return None
    return (f"{cap} hides this CPU's AVX-512 from oneDNN, and OpenVINO's CPU plugin then crashes the process "
            f"(segmentation fault) running a UNet at some image sizes: unset {cap.variable} (docs/cpu-features.md)")


def model_file(files, name: str) -> str:
    xml = [f.path for f in files if f.path.endswith(".xml")]
    if len(xml) != 1:
        raise SdoptError(f"the manifest lists {len(xml)} OpenVINO .xml models for {name}; expected one")
    return xml[0]


def load_components(folder: Path, manifest: Manifest, device: str, precision: str, options: dict[str, Any]) -> dict:
    cache = options.get("cache_dir")
    try:
        compiled_cache = None if cache is False else cache_dir(cache)
    except SdoptError as exc:  # the default folder, where there is no home to put it in: run uncached, as in core()
        warnings.warn(f"{exc}: the models are compiled at every load", stacklevel=2)
        compiled_cache = None
    c = core(compiled_cache, required=bool(cache or os.environ.get("SDOPT_CACHE_DIR")))
    target = openvino_device(device, c)
    config = compile_config(precision, options.get("threads"), options.get("run_settings"))
    if options.get("reshape") and manifest.static_shapes:
        # The static shapes stay what is compiled at load; other requests are compiled on first use.
        # Pipeline.check_request reads manifest.static_shapes, so lifting the limit means clearing it here.
        manifest.notes.append(f"loaded with reshape: built for {manifest.static_shapes}, other shapes compile on first use")
        axes = {name: static_axes(manifest, name) for name in manifest.components}
        manifest.static_shapes = None
    else:
        if options.get("reshape"):
            # A dynamic export already runs any size: say so rather than take the option in silence, as if it had
            # lifted a limit (the user may have meant another artifact, the static one).
            warnings.warn(f"{argument('reshape', True)} changes nothing here: this artifact was exported with dynamic "
                          "shapes and runs any size already", stacklevel=3)
        axes = {name: static_axes(manifest, name) if manifest.static_shapes else {} for name in manifest.components}
    if target == "CPU" and (crash := crash_under_the_cap()):
        # said before the first compile: a segfault later prints nothing at all
        warnings.warn(crash, stacklevel=3)
    wants = {name: manifest.component_precision(name, precision) for name in manifest.components}  # SDXL's VAE: fp32 under fp16
    components = {
        name: OpenVINOComponent(c, folder / model_file(entry.files, name), target,
                                {**config, "INFERENCE_PRECISION_HINT": HINTS[wants[name]]}, axes[name],
                                verified=all(f.sha256 and vouched(folder / f.path, f.sha256) for f in entry.files))
        for name, entry in manifest.components.items()
    }
    if target == "CPU":
        warn_if_int8_may_saturate(manifest)
    differs = {name: comp.runs for name, comp in components.items() if comp.runs not in (wants[name], "unknown")}
    if differs:
        warnings.warn(
            f"OpenVINO on {target} runs {', '.join(sorted(set(differs.values())))} where {precision} was asked for "
            f"({', '.join(differs)}): the device does not support {precision}",
            stacklevel=3,
        )
    return components
