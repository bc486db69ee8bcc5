"""What this CPU can do, read from /proc/cpuinfo (Linux); empty where unknown.

Shared by the bench's machine fingerprint and the runtime's warnings, so both
read the flags the same way. Standard library only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# CPU features that give native bf16 matmul/convolution kernels; without them PyTorch emulates bf16.
BF16_ISA = ("avx512_bf16", "amx_bf16")
# CPU features that multiply u8 by s8 and add into 32 bits in one instruction (VNNI's vpdpbusd, AMX).
# Without them int8 kernels use vpmaddubsw, whose pairwise sums saturate at 16 bits.
INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _cpu_lacks(features: tuple[str, ...]) -> bool:
    """True only when the flags are known and none of ``features`` is among them."""
    flags = cpu_flags()
    return bool(flags) and not any(f in flags for f in features)


def cpu_lacks_bf16() -> bool:
    return _cpu_lacks(BF16_ISA)


def cpu_lacks_int8_dot() -> bool:
    return _cpu_lacks(INT8_DOT_ISA)


def available_bytes() -> int | None:
    """The memory this machine has available (Linux's MemAvailable); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
