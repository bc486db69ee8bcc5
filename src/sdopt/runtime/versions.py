"""Installed versions of libraries, read from package metadata (no imports)."""

from __future__ import annotations

from importlib import metadata

# Distribution names where they differ from the import name.
_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "bnb": ("bitsandbytes",), "quanto": ("optimum-quanto",)}


def library_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        for dist in _DISTRIBUTIONS.get(name, (name,)):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions
