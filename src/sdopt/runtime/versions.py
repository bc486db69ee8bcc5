"""Installed versions of libraries, read from package metadata (no imports)."""

from __future__ import annotations

from importlib import metadata

# Distribution names where they differ from the name sdopt knows a library by.
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "bnb": ("bitsandbytes",), "quanto": ("optimum-quanto",)}


def _installed(name: str) -> tuple[str, str] | None:
    """(distribution, version) of the first of the library's distributions installed here."""
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions(*names: str) -> dict[str, str]:
    """Name -> version of those installed (the manifest's backend_versions)."""
    return {name: found[1] for name in names if (found := _installed(name))}


def described_versions(*names: str) -> str:
    """"bitsandbytes 0.50.2, ...": the installed distributions by their pip names."""
    return ", ".join(f"{dist} {version}" for name in names if (found := _installed(name)) for dist, version in [found])
