"""optimum-quanto: quantized Linear and Conv2d modules (QLinear, QConv2d).

Its weights are saved as they are: the state dict holds each quantized weight
as its parts (``weight._data``, ``weight._scale``, and ``weight._shift`` for
4-bit) and quanto's quantization map (layer -> qtype) goes into the
safetensors metadata. Loading calls quanto's ``requantize``, which rebuilds
the quantized modules on an empty skeleton and loads the parts, without
quantizing again.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import torch

from sdopt.errors import SdoptError
from sdopt.file_reading import user_cache_dir
from sdopt.quant.schemes import Capability
from sdopt.quant.torch_weights import TorchWeights


def _prefer_this_environments_ninja() -> None:
    """optimum-quanto builds its C++ int4 kernel with the ``ninja`` on PATH (torch's cpp_extension), and ninja
    versions keep their build logs differently: a kernel `make` built with one is built again (~90 s on 2 cores)
    by another, at the first int4 load. This environment's own ninja goes first, as `make` puts it when it builds."""
    import os
    import sys

    here = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(here, "ninja")) and path.split(os.pathsep)[0] != here:
        os.environ["PATH"] = here + os.pathsep + path


_prefer_this_environments_ninja()

_QMAP_KEY = "quanto_qmap"
QTYPES = {"int8": "qint8", "int4": "qint4", "fp8": "qfloat8_e4m3fn"}


class QuantoWeights(TorchWeights):
    def recipe(self, module: torch.nn.Module, capability: Capability, layers: list[str]) -> dict:
        # Read back from the quantized weights (quanto chooses the axis and the 4-bit group size
        # itself and exposes neither as an option): per layer type, what every such layer holds.
        seen: dict[str, set] = {}
        for fqn in layers:
            layer = module.get_submodule(fqn)
            w = layer.weight
            seen.setdefault(type(layer).__name__.removeprefix("Q"), set()).add((w.qtype.name, w.axis, getattr(w, "_group_size", None)))
        return {
            kind: [{"weights": q, "axis": axis, "group_size": group, "activations": None} for q, axis, group in sorted(found, key=str)]
            for kind, found in seen.items()
        }

    def quantize(self, module: torch.nn.Module, capability: Capability, layers: list[str], device: str) -> torch.nn.Module:
        from optimum.quanto import freeze
        from optimum.quanto import quantize as quanto_quantize

        module.to(device)
        # include= takes fnmatch patterns; exact names (no wildcards in module names) select exactly these layers.
        quanto_quantize(module, weights=QTYPES[capability.scheme], include=layers)
        freeze(module)  # replace the float weights by their quantized form now, not at the first call
        return module

    def serialize(self, module: torch.nn.Module, capability: Capability) -> tuple[dict, dict[str, str]]:
        from optimum.quanto import quantization_map

        return dict(module.state_dict()), {_QMAP_KEY: json.dumps(quantization_map(module))}

    def deserialize(self, skeleton: torch.nn.Module, tensors: dict, metadata: dict[str, str], capability: Capability, layers: list[str], device: str) -> torch.nn.Module:
        from optimum.quanto import requantize

        qmap = json.loads(metadata[_QMAP_KEY])
        if torch.device(device).type == "cpu" and "qint4" in json.dumps(qmap):
            _load_cpu_unpack_kernel()
        requantize(skeleton, tensors, qmap, device=torch.device(device))
        # requantize loads with strict=False and leaves uninitialised memory where a tensor is missing: check.
        missing = sorted(set(skeleton.state_dict()) - set(tensors))
        if missing:
            raise SdoptError(f"the quantized weights lack {len(missing)} tensor(s) ({', '.join(missing[:3])}...): quantize the checkpoint again")
        _guard_4bit_linears(skeleton)
        return skeleton


def _load_cpu_unpack_kernel() -> None:
    """optimum-quanto unpacks 4-bit weights on the CPU with a C++ kernel that torch's JIT extension build makes in
    quanto's own package folder, and locks a file there at every load, even once it is built: on a read-only install
    (a venv owned by root and run by another user, a read-only image layer) every int4 load on the CPU ended in a
    traceback (PermissionError on .../extensions/cpp/build/lock). There the kernel is built in the user's cache folder
    instead, from a copy of the one already built when there is one (ninja then finds it up to date: no compiler run)."""
    from optimum.quanto.library.extensions import get_extension

    kernel = get_extension("quanto_cpp")
    try:
        kernel.lib
        return
    except OSError as exc:
        package_build = kernel.build_directory
        cache_build = user_cache_dir() / "quanto" / f"{kernel.name}-torch{torch.__version__}"
        denied = exc
    try:
        if not cache_build.exists() and os.path.isdir(package_build):
            shutil.copytree(package_build, cache_build, ignore=shutil.ignore_patterns("lock"))  # keeps the times ninja reads
        kernel.build_directory = str(cache_build)
        kernel.lib
    except OSError as exc:
        raise SdoptError(f"optimum-quanto's int4 CPU kernel can be built neither in its package folder ({denied}) nor in "
                         f"{cache_build} ({exc}); set SDOPT_CACHE_DIR to a writable folder") from exc


@functools.cache
def _qlinear_outside_inference_mode() -> type:
    """QLinear whose forward runs with autograd off but outside ``torch.inference_mode``.

    quanto 0.2.7's 4-bit linear transposes its weight with a view op that fails
    inside inference mode ("Cannot set version_counter for inference tensor",
    optimum-quanto issue #304, closed unfixed), and our executors run every
    component in inference mode. Inference-mode inputs are fine here; only the
    weight's view must be made outside it. A subclass, not a wrapping module:
    the layer keeps its name and stays a Linear, so a LoRA given at run time
    (PEFT wraps Linear layers by name) finds it as it finds an int8 one; a
    wrapper hid it ("Target module OutsideInferenceMode() is not supported").
    """
    from optimum.quanto.nn import QLinear

    class QLinearOutsideInferenceMode(QLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(False), torch.no_grad():
                return super().forward(x)

    return QLinearOutsideInferenceMode


def _guard_4bit_linears(module: torch.nn.Module) -> None:
    from optimum.quanto.nn import QLinear

    for layer in module.modules():
        if isinstance(layer, QLinear) and layer.weight_qtype is not None and layer.weight_qtype.bits == 4:
            layer.__class__ = _qlinear_outside_inference_mode()  # the same object, state and name; only its forward changes
