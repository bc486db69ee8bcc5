"""Keep third-party libraries off the network while sdopt runs: no code fetched, no telemetry sent.

sdopt never downloads at run time except a hub id the user names, and sends nothing anywhere
(docs/guarantees.md). Two libraries it imports would:

- bitsandbytes, on a CPU with AVX-512-BF16, calls
  ``kernels.get_kernel("kernels-community/quantization-bitsandbytes")`` when imported (and
  importing diffusers imports it: every command that loads a pipeline). With the ``kernels``
  package installed (transformers 5.25 depends on it) and a network, that downloads a compiled
  kernel and loads it. Without ``kernels`` it uses the 4-bit kernel it ships.
- OpenVINO's model converter (``openvino.tools.ovc``, what every OpenVINO export calls) and
  NNCF send usage events to Google Analytics through ``openvino_telemetry`` unless the user
  declined in a consent file, each event from a forked process. Besides the traffic, a fork
  while another thread holds the C resolver's lock leaves a child that never exits: a test
  suite run hung at exit on one (2026-12-03). Without ``openvino_telemetry`` both use the
  no-op stubs they ship.
- ONNX Runtime (1.32 on Linux too) sends usage events to Microsoft's collector
  (mobile.events.data.microsoft.com) from a process that holds a session for a few seconds: every
  ONNX export (its parity check), a bench or a server on an ONNX artifact. Its Python
  ``disable_telemetry_events()`` does not stop them; ``ORT_DISABLE_TELEMETRY=1``, read when the
  native library starts, does (checked through a proxy that logs every connection).

So the modules that ask run with that dependency hidden (``sys.modules[name] = None`` while
they execute: their ``import`` raises ImportError, which each of them handles); it is visible
again for everything else afterwards; ONNX Runtime's switch is set for this process and its children
unless the user set it. ``SDOPT_ALLOW_HUB_KERNELS=1`` / ``SDOPT_ALLOW_TELEMETRY=1`` let them ask. Standard library only: ``import sdopt`` stays free of torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

# importer (a module, or every module of a package: a name ending in ".") -> (what it must not see, the opt-in variable)
GUARDS: dict[str, tuple[str, str]] = {
    "bitsandbytes.backends.cpu.ops": ("kernels", "SDOPT_ALLOW_HUB_KERNELS"),
    "openvino.tools.ovc.": ("openvino_telemetry", "SDOPT_ALLOW_TELEMETRY"),
    "nncf.telemetry.": ("openvino_telemetry", "SDOPT_ALLOW_TELEMETRY"),
}
_ABSENT = object()


def _hidden_from(name: str) -> str | None:
    for importer, (hidden, opt_in) in GUARDS.items():
        matches = name.startswith(importer) or name == importer.rstrip(".")
        if matches and os.environ.get(opt_in) != "1":
            return hidden
    return None


class _RunWithModuleHidden(importlib.abc.Loader):
    def __init__(self, loader, hidden: str):
        self._loader, self._hidden = loader, hidden

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        saved = sys.modules.get(self._hidden, _ABSENT)
        sys.modules[self._hidden] = None  # `import hidden` / `from hidden import ...` now raise ImportError
        try:
            self._loader.exec_module(module)
        finally:
            if saved is _ABSENT:
                sys.modules.pop(self._hidden, None)
            else:
                sys.modules[self._hidden] = saved

    def __getattr__(self, name):  # get_source, is_package, ...: what inspect and linecache ask
        return getattr(self._loader, name)


class _Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        hidden = _hidden_from(name)
        if hidden is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _RunWithModuleHidden(spec.loader, hidden)
        return spec


def install() -> None:
    if not any(isinstance(f, _Guard) for f in sys.meta_path):
        sys.meta_path.insert(0, _Guard())
    if os.environ.get("SDOPT_ALLOW_TELEMETRY") != "1":
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime's native library reads it
