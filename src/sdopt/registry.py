"""What every plug-in declares, and the one registry type that holds each kind.

Backends (runtime/backends.py), exporters (export/targets.py) and quantizers
(quant/__init__.py) are all ``Plugin``s: the sdopt module that implements
them, the pip extra and the libraries they need, the options they take, and
whether they are available here. Each kind adds only its own facts (a
backend's precisions per device, an exporter's target backend, a quantizer's
capability rows). Checking a request against these declarations imports no
backend library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from sdopt.errors import SdoptError, argument, require

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Plugin:
    name: str  # what the user types: --backend NAME, --to NAME, the manifest's backend
    module: str  # the sdopt module that implements it ("module" or "module:Name"), imported only when used
    extra: str | None  # the pip extra that installs its libraries (None: the core install)
    requires: tuple[str, ...]  # importable modules it needs
    options: tuple[str, ...] = ()  # the options it takes; any other given is refused, never ignored
    description: str = ""
    # What it takes instead of an option it refuses, said in the refusal ({"static": "--height and --width ..."})
    instead: dict[str, str] = field(default_factory=dict)

    # The argument that chooses a plug-in of this kind, as the messages below name it (errors.argument: --to onnx on
    # the command line, target='onnx' in Python); each kind sets its own.
    keyword = "backend"
    flag = "--backend"

    def named(self) -> str:
        """This plug-in as the argument that chose it: --backend quanto, backend='quanto'."""
        return argument(self.keyword, self.name, self.flag)

    def implementation(self):
        """The implementing module, or the object ``module:Name`` names in it; a missing library
        raises an error naming the extra to install."""
        for mod in self.requires:
            require(mod, self.extra or "all")
        module_name, _, attribute = self.module.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module

    def missing(self) -> list[str]:
        """The required modules not installed here (found, not imported)."""
        import importlib.util

        out = []
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(mod)
        return out

    def available(self) -> bool:
        return not self.missing()

    def check_options(self, options: dict, others: dict | None = None) -> None:
        """Refuse options this plug-in does not take (set ones: None and False mean "not given")."""
        given = [k for k, v in options.items() if v is not None and v is not False]
        unknown = [k for k in given if k not in self.options]
        if not unknown:
            return
        hints = "".join(f". For {argument(k)}: {self.instead[k]}" for k in unknown if k in self.instead)
        takers = {k: tuple(sorted(p.name for p in (others or {}).values() if k in p.options)) for k in unknown}
        flags = ", ".join(argument(k) for k in unknown)
        if len(set(takers.values())) > 1:  # the flags go with different plug-ins: each flag's, so none reads as taken by none
            def said(names: tuple[str, ...], count: int) -> str:
                return f"{' and '.join(names)} take{'s' * (len(names) == 1)} {'them' if count > 1 else 'it'}" if names else "none does"

            groups = {names: [k for k in unknown if takers[k] == names] for names in dict.fromkeys(takers.values())}
            raise SdoptError(f"{self.named()} does not take "
                             + "; ".join(f"{', '.join(argument(k) for k in ks)} ({said(names, len(ks))})" for names, ks in groups.items()) + hints)
        names = next(iter(takers.values()))
        raise SdoptError(
            f"{self.named()} does not take {flags}"
            + (f"; {' and '.join(names)} {'do' if len(names) > 1 else 'does'}" if names else f"; it takes: {', '.join(argument(k) for k in self.options) or 'no options'}")
            + hints
        )


class Registry(dict, Generic[T]):
    """A dict of plug-ins by name, in registration order."""

    def __init__(self, kind: str, plural: str, key: Callable[[T], str] = lambda p: p.name):
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
