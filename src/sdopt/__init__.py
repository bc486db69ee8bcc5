"""sdopt: export, quantize, run, benchmark and gate Stable Diffusion-class models.

Importing this package is cheap on purpose: it must not import torch or any
backend library. ``load`` imports the runtime only when called.
"""

from sdopt import _offline, _third_party_logs
from sdopt.errors import SdoptError
from sdopt.request import GenerateRequest, GenerateResult

__version__ = "0.1.0"

_third_party_logs.install()
_offline.install()

__all__ = ["load", "GenerateRequest", "GenerateResult", "SdoptError", "__version__"]


def load(path, device: str = "cpu", precision: str | None = None, **options):
    """Load any sdopt artifact (or a plain Diffusers folder) as a ``Pipeline``."""
    from sdopt.runtime.load import load as _load

    return _load(path, device=device, precision=precision, **options)
