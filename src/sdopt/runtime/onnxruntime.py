"""The ONNX Runtime backend: one InferenceSession per component.

The execution provider follows the device: CPUExecutionProvider on "cpu";
CUDA (or TensorRT, with provider="tensorrt") where onnxruntime-gpu is
installed. On CUDA, inputs and outputs go through IO binding so ORT copies
each tensor once rather than per run-call allocation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sdopt.errors import SdoptError, exception_line
from sdopt.manifest import Manifest
from sdopt.runtime.backends import BACKENDS
from sdopt.runtime.executor import to_rank

# ONNX tensor type strings -> numpy dtypes, for feeding graphs exported by others (Optimum's
# text encoders may take int32 ids; fp16 graphs without kept I/O types take float16).
_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for(device: str, provider: str | None = None) -> list:
    kind = device.split(":", 1)[0]
    if (provider or kind) not in _PROVIDERS:
        raise SdoptError(f"provider={provider!r}: ONNX Runtime runs here with one of {', '.join(_PROVIDERS)} (or none: the device's)")
    wanted = _PROVIDERS[provider or kind]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise SdoptError(
            f"ONNX Runtime has no {wanted[0]} here (available: {', '.join(available)}); "
            "for CUDA install onnxruntime-gpu instead of onnxruntime"
        )
    if kind == "cuda" and ":" in device:
        index = int(device.split(":", 1)[1])
        return [(p, {"device_id": index}) if p != "CPUExecutionProvider" else p for p in wanted]
    return wanted


# A profile's [run.onnxruntime] keys -> how each sets ort.SessionOptions.
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
RUN_SETTINGS = BACKENDS["onnxruntime"].run_settings


def session_options(threads: int | None = None, run_settings: dict[str, Any] | None = None) -> ort.SessionOptions:
    """SessionOptions from the ``threads`` load option and a profile's run settings (names as in RUN_SETTINGS)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise for users
    settings = dict(run_settings or {})
    if threads:
        settings.setdefault("intra_op_num_threads", threads)
    unknown = sorted(set(settings) - set(RUN_SETTINGS))
    if unknown:
        raise SdoptError(f"ONNX Runtime run settings {', '.join(unknown)} are not known; give any of {', '.join(RUN_SETTINGS)}")
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        if key in settings:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SdoptError(f"ONNX Runtime {key} = {value!r}: give a whole number of threads, 0 or more (0: ONNX Runtime's default)")
            setattr(options, key, value)
    if not isinstance(settings.get("allow_spinning", True), bool):
        raise SdoptError(f"ONNX Runtime allow_spinning = {settings['allow_spinning']!r}: give true or false")
    for key, names, enum in (("graph_optimization_level", _LEVELS, ort.GraphOptimizationLevel),
                             ("execution_mode", _MODES, ort.ExecutionMode)):
        if key in settings:
            if settings[key] not in names:
                raise SdoptError(f"ONNX Runtime {key} = {settings[key]!r}: give one of {', '.join(names)}")
            setattr(options, key, getattr(enum, names[settings[key]]))
    if not settings.get("allow_spinning", True):
        # Idle ORT threads busy-wait after a run by default: right for a pipeline (the next
        # step starts at once), wrong beside another engine timed on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def check_run_settings(settings: dict[str, Any], device: str) -> None:
    """A profile's [run.onnxruntime], checked when the profile is read: the values session_options takes."""
    session_options(None, settings)


def describe(options: ort.SessionOptions, providers: list) -> dict[str, Any]:
    """What a session was created with, for the bench report (0 threads: ORT's default, one per physical core)."""
    return {
        "providers": [p if isinstance(p, str) else p[0] for p in providers],
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "graph_optimization_level": str(options.graph_optimization_level).rsplit(".", 1)[-1],
        "execution_mode": str(options.execution_mode).rsplit(".", 1)[-1],
        "allow_spinning": _config_entry(options, "session.intra_op.allow_spinning") != "0",
    }


def _config_entry(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # never set: ORT's default
        return None


def native_path(path: str | os.PathLike, exact: bool = False) -> str:
    """The path as ONNX Runtime must be given it: it opens the UTF-8 bytes of the str it gets, which are the file's
    own bytes only where the file system encoding is UTF-8. Under another locale (ISO-8859-1, say) a path with a
    non-ASCII character gave ORT's "File doesn't exist" for a file that does. Its bytes read as UTF-8 where they are;
    else the cause and the fix are said. exact: the path must also be the same str, for a library that opens it both
    ways (torch's ONNX exporter: Python's open, and its UTF-8 bytes for a graph's external weights)."""
    try:
        name = os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        name = None
    if name is None or (exact and name != os.fsdecode(path)):
        raise SdoptError(f"{os.fsdecode(path)}: ONNX Runtime and the ONNX exporter open files by UTF-8 names, and this locale "
                         f"reads them in {sys.getfilesystemencoding()}: run sdopt under a UTF-8 locale (LC_ALL=C.UTF-8), or give "
                         "a path in ASCII")
    return name


class OrtComponent:
    def __init__(self, path: Path, providers: list, device: str, options: ort.SessionOptions | None = None):
        options = options or session_options()
        name = native_path(path)
        try:
            self.session = ort.InferenceSession(name, sess_options=options, providers=providers)
        except Exception as exc:  # ONNX Runtime's InvalidProtobuf, Fail, ...: its first line says what
            first = exception_line(exc, most=400)
            damaged = "protobuf" in first.lower() or "invalid" in first.lower()
            raise SdoptError(f"ONNX Runtime cannot load {path}: {first}"
                             + ("; the graph is damaged or incomplete: export it again" if damaged else "")) from None
        self.settings = describe(options, providers)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.use_binding = device.startswith("cuda")

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        meta = self.inputs[name]
        return to_rank(np.asarray(array, dtype=_NUMPY.get(meta.type, array.dtype)), len(meta.shape))

    def __call__(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        feed = {k: self._feed(k, v) for k, v in arrays.items() if k in self.inputs}
        if self.use_binding:
            binding = self.session.io_binding()
            for k, v in feed.items():
                binding.bind_cpu_input(k, v)
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            outputs = binding.copy_outputs_to_cpu()
        else:
            outputs = self.session.run(self.output_names, feed)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outputs)}

    def close(self) -> None:
        self.session = None


def load_components(folder: Path, manifest: Manifest, device: str, precision: str, options: dict[str, Any]) -> dict:
    providers = providers_for(device, options.get("provider"))
    session = session_options(options.get("threads"), options.get("run_settings"))  # bad settings refused before any graph loads
    components = {name: OrtComponent(folder / _graph_file(entry.files, name), providers, device, session)
                  for name, entry in manifest.components.items()}
    if device.startswith("cpu"):
        from sdopt.runtime.int8_saturation import warn_if_int8_may_saturate

        warn_if_int8_may_saturate(manifest)
    return components


def _graph_file(files, name: str) -> str:
    graphs = [f.path for f in files if f.path.endswith(".onnx")]
    if len(graphs) != 1:
        raise SdoptError(f"the manifest lists {len(graphs)} .onnx graphs for {name}; expected one")
    return graphs[0]
