"""The ONNX Runtime backend: one InferenceSession per component.

The execution provider follows the device: CPUExecutionProvider on "cpu";
CUDA (or TensorRT, with provider="tensorrt") where onnxruntime-gpu is
installed. On CUDA, inputs and outputs go through IO binding so ORT copies
each tensor once rather than per run-call allocation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sdopt.errors import SdoptError
from sdopt.manifest import Manifest
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


class OrtComponent:
    def __init__(self, path: Path, providers: list, threads: int | None, device: str, spin: bool = True):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            # Idle ORT threads busy-wait after a run by default: right for a pipeline (the next
            # step starts at once), wrong beside another engine timed on the same cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise for users
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
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
    threads = options.get("threads")
    return {
        name: OrtComponent(folder / _graph_file(entry.files, name), providers, threads, device)
        for name, entry in manifest.components.items()
    }


def _graph_file(files, name: str) -> str:
    graphs = [f.path for f in files if f.path.endswith(".onnx")]
    if len(graphs) != 1:
        raise SdoptError(f"the manifest lists {len(graphs)} .onnx graphs for {name}; expected one")
    return graphs[0]
