"""Exporters: one module per target, registered here with what each declares it supports.

An exporter module provides::

    export_components(source: Path, manifest: Manifest, out: Path, precision: str,
                      options: dict) -> ExportedComponents

writing its component files under ``out`` and returning their manifest entries,
parity and backend facts. ``sdopt.export.run.export`` does everything around
it (source checks, atomic output folder, tokenizer/scheduler copies, manifest).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdopt.registry import Registry


@dataclass(frozen=True)
class Exporter:
    target: str  # the --to name
    module: str
    backend: str  # the runtime backend that runs what it writes
    extra: str  # pip extra
    requires: tuple[str, ...]
    precisions: tuple[str, ...]
    description: str = ""


EXPORTERS: Registry[Exporter] = Registry("export target", "targets", key=lambda e: e.target)
register_exporter = EXPORTERS.register
get_exporter = EXPORTERS.lookup


# The registrations, last: they import this module's names.
from sdopt.export import targets as _targets  # noqa: E402,F401
