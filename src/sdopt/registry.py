"""One small registry type for every kind of plug-in: backends, exporters, quantizers.

Each kind keeps its own instance (runtime/backends.py BACKENDS, export EXPORTERS,
quant QUANTIZERS); this is only the shared mechanics: register by a key, and
look up with an error that names what is known.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from sdopt.errors import SdoptError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """A dict of plug-ins by name, in registration order."""

    def __init__(self, kind: str, plural: str, key: Callable[[T], str]):
        super().__init__()
        self.kind, self.plural, self._key = kind, plural, key

    def register(self, item: T) -> T:
        self[self._key(item)] = item
        return item

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise SdoptError(f"unknown {self.kind} '{name}'; known {self.plural}: {', '.join(self) or 'none'}") from None
