"""LoRAs per request on the torch backend: each file loaded once, scales set per request, unloaded cleanly.

A pipeline keeps the adapters it has loaded (by file, size and modification
time, so an edited file is loaded again, and its old adapter removed). A request names the LoRAs it wants and
their scales; the others stay loaded but inactive, and a request with none runs
the base weights (PEFT bypasses disabled adapters, so its image is the base
model's). ``unload()`` removes every adapter layer and leaves the modules as
they were loaded. Its owner, the Pipeline, calls it under its one-call-at-a-time lock, which covers the
loop that runs on the adapters too: it needs no lock of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdopt.lora import LoraFile, summed_scales


class RuntimeLoras:
    def __init__(self, modules: dict[str, Any], family):
        self.modules, self.family = modules, family
        self.loaded: dict[tuple, str] = {}  # (path, size, mtime) -> adapter name
        self.active: dict[str, float] = {}
        self._made = 0  # adapters made so far: the next one's name (a replaced one's name is not used again)

    @staticmethod
    def _key(path: Path) -> tuple:
        stat = path.stat()
        return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def activate(self, loras: list[LoraFile]) -> dict[str, float]:
        """Load what is new, then make exactly these adapters active at these scales."""
        from sdopt.lora.apply import delete_adapter, load_adapter, set_scales

        adapters = []
        for lora in loras:
            key = self._key(lora.path)
            if key not in self.loaded:
                # The file as it was before it changed: let go of its adapter, which no request can reach any more (a
                # server whose LoRA is saved again and again, by a training run, grew by one adapter's weights each time).
                for stale in [k for k in self.loaded if k[0] == key[0]]:
                    old = self.loaded.pop(stale)
                    delete_adapter(self.modules, self.family, old)
                    self.active.pop(old, None)
                name = f"lora{self._made}"
                self._made += 1
                load_adapter(self.modules, self.family, lora, name)
                self.loaded[key] = name
            adapters.append((self.loaded[key], lora.scale))
        scales = summed_scales(adapters)
        if scales != self.active:
            set_scales(self.modules, self.family, scales)
            self.active = scales
        return scales

    def unload(self) -> None:
        """Remove every adapter layer: the modules hold their loaded weights again."""
        from sdopt.lora.apply import adapters_of, remove_adapter_layers

        for name in ("unet", *self.family.text_encoders):
            module = self.modules[name]
            if adapters_of(module):
                remove_adapter_layers(name, module)
        self.loaded.clear()
        self.active = {}
