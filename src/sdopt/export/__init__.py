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

from sdopt.registry import Plugin, Registry

@dataclass(frozen=True, kw_only=True)
class Exporter(Plugin):
    """An export target (``name`` is the --to name); ``options`` are the export options it reads."""

    backend: str  # the runtime backend that runs what it writes
    precisions: tuple[str, ...]

    keyword = "target"  # sdopt.export.run.export(model, target, ...)
    flag = "--to"


EXPORTERS: Registry[Exporter] = Registry("export target", "targets")
register_exporter = EXPORTERS.register
get_exporter = EXPORTERS.lookup


# The registrations, last: they import this module's names.
from sdopt.export import targets as _targets  # noqa: E402,F401
