"""The TensorRT backend: one engine per component, run on one CUDA stream with torch-allocated device buffers.

Unverified on a GPU (see sdopt.tensorrt). Before any engine is read, the
manifest's engine key is checked against this machine's TensorRT version and
GPU (sdopt.tensorrt.engines.check_engines): an engine built elsewhere is
refused with the command that rebuilds it. numpy in and out at the executor
boundary, as every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt
import torch

from sdopt.errors import SdoptError
from sdopt.manifest import Manifest
from sdopt.runtime.executor import to_rank
from sdopt.tensorrt.engines import check_engines, here

_TORCH = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
          trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32}


class TensorRTComponent:
    def __init__(self, path: Path, runtime: trt.Runtime, stream: torch.cuda.Stream):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise SdoptError(f"TensorRT could not read the engine {path}; rebuild it (sdopt export --to tensorrt)")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.output_names = self.outputs  # as every backend's component names them (Pipeline.clip_skip_layers)

    def __call__(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        keep = []  # device tensors must outlive the asynchronous launch
        for name in self.inputs:
            dtype = _TORCH[self.engine.get_tensor_dtype(name)]
            array = to_rank(np.asarray(arrays[name]), len(self.engine.get_tensor_shape(name)))
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to("cuda", dtype=dtype)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=_TORCH[self.engine.get_tensor_dtype(name)], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise SdoptError("TensorRT failed to run the engine (its log above says why)")
        self.stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outputs.items()}

    def close(self) -> None:
        self.context = self.engine = None


def load_components(folder: Path, manifest: Manifest, device: str, precision: str, options: dict[str, Any]) -> dict:
    check_engines(manifest.export.get("tensorrt"), here(), folder, (manifest.source or {}).get("path"))
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    stream = torch.cuda.Stream()
    return {name: TensorRTComponent(folder / name / "model.plan", runtime, stream) for name in manifest.components}
