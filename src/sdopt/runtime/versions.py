"""Installed versions of libraries, read from package metadata (no imports)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

# Distribution names where they differ from the name sdopt knows a library by.
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "bnb": ("bitsandbytes",), "quanto": ("optimum-quanto",)}


# Once per process: reading a distribution's metadata scans sys.path (~0.7 ms a name on a 2-core EPYC), and
# require_compatible_libraries reads five on every torch component load (3 loads in a tiny model's 110-170 ms).
@lru_cache(maxsize=None)
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


def release(version: str) -> tuple[int, ...]:
    """(0, 36, 0) of "0.36.0", "0.37.0.dev0" or "2.13.0+cpu": the release numbers, compared as a tuple."""
    import re

    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def incompatible_libraries(installed: dict[str, str] | None = None) -> str | None:
    """One line naming the installed releases whose Diffusers models cannot be imported together, and the pip command
    that mends it; None where they can. pip admits both pairs: neither Diffusers' metadata says it, and pyproject.toml's
    ranges cannot say a bound that holds only beside another package."""
    found = installed if installed is not None else library_versions("diffusers", "transformers", "torchao", "peft", "accelerate")
    diffusers, transformers, torchao, peft, accelerate = (found.get(name) for name in ("diffusers", "transformers", "torchao",
                                                                                        "peft", "accelerate"))
    if diffusers and torchao and release(diffusers) < (0, 37):
        # Diffusers 0.35 and 0.36 use their torchao quantizer's logger before defining it where torchao's layouts moved
        # (torchao 0.18, sdopt's [quant]): every model import stops with "name 'logger' is not defined".
        return (f"diffusers {diffusers} cannot import its models beside torchao {torchao} (fixed in diffusers 0.37): "
                "pip install 'diffusers>=0.37', or pip uninstall torchao")
    if diffusers and transformers and release(diffusers) >= (0, 37) and release(transformers) < (4, 48):
        # Diffusers 0.37 and 0.38 (seen; 0.42 too) import Transformers' Dinov2WithRegistersConfig with their autoencoders,
        # which Transformers 4.47 and older lack: every model import stops with an ImportError.
        return f"diffusers {diffusers} needs transformers 4.48 or newer, not {transformers}: pip install 'transformers>=4.48'"
    if diffusers and peft and accelerate and release(accelerate) < (0, 32):
        # Diffusers imports peft, where installed, with every model; peft (0.17-0.22 seen) imports accelerate's
        # clear_device_cache, which came in accelerate 0.32.
        return (f"diffusers {diffusers} imports peft {peft} with every model, which needs accelerate 0.32 or newer, not "
                f"{accelerate}: pip install 'accelerate>=0.32'")
    return None


def require_compatible_libraries() -> None:
    """Refuse, in one line, a Diffusers that cannot import its models beside the Transformers or torchao installed
    (before the import's traceback)."""
    problem = incompatible_libraries()
    if problem:
        from sdopt.errors import SdoptError

        raise SdoptError(problem)
