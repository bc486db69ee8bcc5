"""Build one TensorRT engine from an ONNX graph, through TensorRT's Python API (no trtexec).

Unverified: no machine this project has run on had TensorRT (its wheels are far
larger than what reaches the GPU machine we are lent). What is verified is
everything around it: the profiles (profiles.py), the engine key and the
refusals (engines.py), the exporter's checks (export/tensorrt.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError
from sdopt.tensorrt.profiles import InputProfile

# int8 and fp8 engines are built from Q/DQ graphs (sdopt.tensorrt.quantize): the layers between no Q/DQ pair run
# in fp16 rather than fp32, as ModelOpt's diffusion examples build them.
_FLAGS = {"fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16"), "fp8": ("FP8", "FP16")}


def build_engine(onnx_path: Path, plan_path: Path, profiles: dict[str, InputProfile], precision: str,
                 timing_cache: Path, refit: bool = False, workspace_gib: float | None = None) -> dict[str, Any]:
    """Parse ``onnx_path`` (its external data beside it), build for ``profiles`` in ``precision``,
    write the serialized engine to ``plan_path``; the timing cache is read first and written back."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so model.onnx_data is found beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SdoptError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in _FLAGS.get(precision, ()):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)  # weights swap without a rebuild (a fused LoRA)
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if -1 in tuple(tensor.shape):  # only dynamic inputs take a profile
            p = profiles[tensor.name]
            profile.set_shape(tensor.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SdoptError(f"TensorRT could not build an engine from {onnx_path} in {precision} (its log above says why)")
    plan_path.write_bytes(bytes(plan))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"precision": precision, "refittable": refit, "layers": network.num_layers}
