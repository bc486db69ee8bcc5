"""Drop known-harmless warnings that third-party libraries log on every import.

With torchao 0.18 installed (the quant extra), importing diffusers imports torchao,
which logs "Failed to load .../_C_*.so" for its CUDA-only kernels on a CPU build
of torch, makes torch log two "Enum subclass ... register_constant() is
deprecated" warnings, and then diffusers logs "Unable to import `torchao` Tensor
objects". On a CPU with AVX-512-BF16, importing bitsandbytes logs that it
could not fetch a CPU kernel from the Hugging Face hub through the ``kernels``
package: sdopt never downloads at run time, and bitsandbytes then uses the
kernel it ships. They appear on every sdopt command and say nothing about the
user's work. Only these messages are filtered, by logger and text; every other warning
from these loggers still shows. Uses only the standard library: ``import sdopt``
stays free of torch.
"""

from __future__ import annotations

import logging

_KNOWN_NOISE = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and str(record.msg).startswith(self.prefixes))


def install() -> None:
    for name, prefixes in _KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(prefixes))
