"""Keep bitsandbytes from fetching code from the Hugging Face hub when it is imported.

On a CPU with AVX-512-BF16, importing bitsandbytes (which importing diffusers does,
so every sdopt command that loads a pipeline) calls
``kernels.get_kernel("kernels-community/quantization-bitsandbytes")``: with the
``kernels`` package installed (transformers 5.25 depends on it) and a network,
that downloads a compiled kernel and loads it — a download at run time, of code,
which sdopt never does (docs/cpu-features.md). Offline it only logs.

The one module that asks runs here with ``kernels`` hidden from it, so its
import fails the way bitsandbytes already handles: it logs (filtered, see
``_third_party_logs``) and uses the 4-bit kernel it ships. Only that module's
import is changed; ``kernels`` stays importable for everything else. Users who
want the hub kernel set ``SDOPT_ALLOW_HUB_KERNELS=1``. Standard library only:
``import sdopt`` stays free of torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

OPT_IN = "SDOPT_ALLOW_HUB_KERNELS"
_ASKS_THE_HUB = "bitsandbytes.backends.cpu.ops"
_HIDDEN = "kernels"
_ABSENT = object()


class _RunWithKernelsHidden(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        saved = sys.modules.get(_HIDDEN, _ABSENT)
        sys.modules[_HIDDEN] = None  # `from kernels import ...` now raises ImportError
        try:
            self._loader.exec_module(module)
        finally:
            if saved is _ABSENT:
                del sys.modules[_HIDDEN]
            else:
                sys.modules[_HIDDEN] = saved

    def __getattr__(self, name):  # get_source, is_package, ...: what inspect and linecache ask
        return getattr(self._loader, name)


class _GuardBitsandbytes(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _ASKS_THE_HUB:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _RunWithKernelsHidden(spec.loader)
        return spec


def install() -> None:
    if os.environ.get(OPT_IN) == "1":
        return
    if not any(isinstance(f, _GuardBitsandbytes) for f in sys.meta_path):
        sys.meta_path.insert(0, _GuardBitsandbytes())
