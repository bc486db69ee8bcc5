"""torch.compile on the torch backend: the UNet (both halves when step-cached) and the VAE decode, compiled at first call.

``compile`` (a load option) is an inductor mode — ``default``, ``reduce-overhead``
(inductor with CUDA-graph capture: static shapes on a GPU), ``max-autotune``,
``max-autotune-no-cudagraphs`` — or another torch.compile backend:
``cudagraphs`` (CUDA graphs without inductor's code generation) or ``eager`` /
``aot_eager`` (Dynamo's capture only, for debugging; what the tests use, since
inductor spends ~40 s on even the tiny UNet on a 2-core CPU).

Compilation happens at the first call at each new shape, so its cost lands in
the first generate (the bench records it as ``first_generate_s`` and the
compiled graphs before and after its measured runs: a new size recompiles).
"""

from __future__ import annotations

from typing import Any

from sdopt.errors import SdoptError, argument

INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OTHER_BACKENDS = ("cudagraphs", "eager", "aot_eager")
COMPILED = ("unet", "unet_shallow")  # where the time goes; the VAE decode is compiled as a method
COMPILED_COMPONENTS = (*COMPILED, "vae_decoder")


def compile_setting(value: Any, device: str) -> str | None:
    """The ``compile`` option as given (True: inductor's default mode), checked against the device."""
    if value is None or value is False:
        return None
    setting = "default" if value is True else str(value)
    if setting not in (*INDUCTOR_MODES, *OTHER_BACKENDS):
        raise SdoptError(f"compile={setting!r}: choose an inductor mode ({', '.join(INDUCTOR_MODES)}) or a backend ({', '.join(OTHER_BACKENDS)})")
    if setting in ("reduce-overhead", "cudagraphs") and not device.startswith("cuda"):
        raise SdoptError(f"{argument('compile', setting)} captures CUDA graphs: it needs {argument('device', 'cuda')} (on CPU use 'default' or 'max-autotune')")
    return setting


def compile_components(components: dict[str, Any], setting: str) -> None:
    """Wrap the UNet's and the VAE decoder's compute in torch.compile (in place, on the executors)."""
    import torch

    kwargs = {"mode": setting} if setting in INDUCTOR_MODES else {"backend": setting}
    for name in COMPILED:
        if name in components:
            components[name].module = torch.compile(components[name].module, **kwargs)
    vae = components["vae_decoder"].module if "vae_decoder" in components else None
    if hasattr(vae, "decode"):
        vae.decode = torch.compile(vae.decode, **kwargs)  # the executor calls decode(); vae_encoder shares the module, not this method


def compiled_graphs() -> int | None:
    """Graphs torch.compile has compiled in this process so far (None when Dynamo was never used)."""
    import sys

    if "torch._dynamo" not in sys.modules:
        return None
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def original(module: Any) -> Any:
    """The module under a torch.compile wrapper (what LoRA adapters are loaded into)."""
    return getattr(module, "_orig_mod", module)
