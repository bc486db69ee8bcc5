"""The registry of runtime backends and what each declares it can do.

A backend is a module with ``load_components(folder, manifest, device, precision, options)``
returning one executor per component. The registry is plain data, so listing
backends or checking a request imports no backend library; the module is
imported only when an artifact of that backend is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdopt.errors import SdoptError
from sdopt.registry import Plugin, Registry


# The precisions generate's and serve's --precision and a bench argument's PATH@PRECISION take: those torch casts an
# artifact to at load (the other backends run what their export wrote). Quantized weights are an artifact of their own.
RUN_PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True, kw_only=True)
class Backend(Plugin):
    """A runtime (``name`` is the manifest's ``backend``); ``options`` are the load options it takes."""

    precisions: dict[str, tuple[str, ...]]  # device kind -> precisions it can run there
    # Whether it can run an artifact in another precision than it was written in (torch casts
    # weights at load); the others run what their export compiled.
    casts_at_load: bool = False
    # The keys of its run_settings (a profile's [run.NAME] table), checked when a profile is read; None: any. Its
    # module's check_run_settings(settings, device) checks the values then (and the names, where it takes any: OpenVINO
    # takes its device's properties by name, which only OpenVINO itself can list), where the backend is installed.
    run_settings: tuple[str, ...] | None = None

    def named(self) -> str:
        return f"the {self.name} backend"  # the artifact's, chosen by no argument

    def check(self, device: str, precision: str) -> None:
        kind = device_kind(device)
        if kind not in self.precisions:
            raise SdoptError(
                f"the {self.name} backend does not run on device '{device}'; "
                f"it runs on: {', '.join(self.precisions)}"
            )
        if precision not in self.precisions[kind]:
            raise SdoptError(
                f"{precision} is not supported on {kind} by the {self.name} backend; "
                f"choose one of: {', '.join(self.precisions[kind])}"
            )


BACKENDS: Registry[Backend] = Registry("backend", "backends")
register_backend = BACKENDS.register
get_backend = BACKENDS.lookup


def device_kind(device: str) -> str:
    return device.split(":", 1)[0].lower()


def check_cuda_index(device: str) -> None:
    """'cuda' or 'cuda:N': another suffix ('cuda:x') reached torch or ONNX Runtime's provider options as a traceback."""
    kind, sep, index = device.partition(":")
    if kind.lower() == "cuda" and sep and not index.isdigit():
        raise SdoptError(f"device '{device}': name a CUDA GPU 'cuda' or 'cuda:N', N its index (0, 1, ...)")


register_backend(
    Backend(
        name="torch",
        module="sdopt.runtime.torch",
        extra=None,
        requires=("torch", "diffusers", "transformers"),
        precisions={"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")},
        options=("attention_slicing", "vae_tiling", "cpu_offload", "deep_cache", "compile", "channels_last", "threads"),
        casts_at_load=True,
    )
)

register_backend(
    Backend(
        name="onnxruntime",
        module="sdopt.runtime.onnxruntime",
        extra="onnx",
        requires=("onnxruntime",),
        precisions={"cpu": ("fp32", "fp16", "mixed"), "cuda": ("fp32", "fp16", "mixed")},
        options=("threads", "provider", "run_settings"),
        run_settings=("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "execution_mode", "allow_spinning"),
    )
)

# Device kinds are OpenVINO's, lower-cased ("openvino:NAME" passes any device string through);
# what precision really runs is asked of each compiled model (runtime/openvino.py).
register_backend(
    Backend(
        name="openvino",
        module="sdopt.runtime.openvino",
        extra="openvino",
        requires=("openvino",),
        precisions={
            "cpu": ("fp32", "bf16", "fp16"),
            "gpu": ("fp32", "fp16"),
            "npu": ("fp16",),
            "auto": ("fp32", "fp16", "bf16"),
            "openvino": ("fp32", "fp16", "bf16"),
        },
        options=("reshape", "cache_dir", "threads", "run_settings"),
    )
)

# Engines run where they were built (TensorRT version, GPU compute capability): checked at load
# against the manifest's export.tensorrt (sdopt.tensorrt.engines).
register_backend(
    Backend(
        name="tensorrt",
        module="sdopt.runtime.tensorrt",
        extra="tensorrt",
        requires=("tensorrt", "torch"),
        precisions={"cuda": ("fp32", "fp16", "bf16")},
    )
)
