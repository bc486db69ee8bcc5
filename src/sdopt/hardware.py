"""What this CPU can do, read from /proc/cpuinfo (Linux), less what a oneDNN cap keeps from the libraries; empty where unknown.

Shared by the machine's fingerprint (sdopt.machine: the flags and the CPU's model)
and the runtime's warnings, so all read /proc/cpuinfo the same way. Standard library only.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

# CPU features that give native bf16 matmul/convolution kernels; without them PyTorch emulates bf16.
BF16_ISA = ("avx512_bf16", "amx_bf16")
# CPU features that multiply u8 by s8 and add into 32 bits in one instruction (VNNI's vpdpbusd, AMX).
# Without them int8 kernels use vpmaddubsw, whose pairwise sums saturate at 16 bits.
INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


# oneDNN's ISA levels, lowest first, with the CPU flags each one adds. oneDNN (inside torch and OpenVINO) uses
# nothing above $ONEDNN_MAX_CPU_ISA (or its older name $DNNL_MAX_CPU_ISA): capped at AVX2 on an AVX-512-BF16 CPU,
# torch emulates bf16 (a 512² matmul at 1.8 GFLOP/s against fp32's 31, 2-core AMD EPYC Zen 4) and int8 products
# take vpmaddubsw. So the flags sdopt decides by are those the cap leaves, as the libraries' own kernels see them.
ONEDNN_ISA_LEVELS = (
    ("SSE41", ()),
    ("AVX", ("avx", "f16c")),
    ("AVX2", ("avx2", "fma")),
    ("AVX2_VNNI", ("avx_vnni",)),
    ("AVX2_VNNI_2", ("avx_vnni_int8", "avx_ne_convert")),
    ("AVX512_CORE", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")),
    ("AVX512_CORE_VNNI", ("avx512_vnni",)),
    ("AVX512_CORE_BF16", ("avx512_bf16",)),
    ("AVX512_CORE_FP16", ("avx512_fp16",)),
    ("AVX512_CORE_AMX", ("amx_tile", "amx_int8", "amx_bf16")),
    ("AVX512_CORE_AMX_FP16", ("amx_fp16",)),
)
ONEDNN_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads the first one set


_LEVEL_NAMES = [name for name, _ in ONEDNN_ISA_LEVELS]


class OneDnnCap(NamedTuple):
    variable: str  # ONEDNN_MAX_CPU_ISA, or DNNL_MAX_CPU_ISA
    value: str  # as set ("avx2")
    level: str  # as oneDNN reads it, case and blanks aside: one of ONEDNN_ISA_LEVELS' names ("AVX2")

    def __str__(self) -> str:
        # by its level: "avx2" and "AVX2" are one cap to oneDNN, and a record (an artifact's overflow-fix reason) or a
        # message should not tell them apart
        return f"{self.variable}={self.level}"


def cap_level(value: str) -> str:
    """A cap's value as oneDNN reads it, case and blanks aside ("avx2 " is AVX2): how a cap is recorded and compared."""
    return value.strip().upper()


def onednn_isa_cap() -> OneDnnCap | None:
    """The oneDNN ISA cap in effect, None where there is none. A value oneDNN does not know (or ALL/DEFAULT) caps
    nothing: oneDNN ignores it."""
    for name in ONEDNN_CAP_VARIABLES:
        if value := os.environ.get(name):
            level = cap_level(value)
            return OneDnnCap(name, value, level) if level in _LEVEL_NAMES else None
    return None


def _above_cap(flags: frozenset[str]) -> frozenset[str]:
    """The flags the oneDNN cap (if any) puts out of the libraries' reach."""
    cap = onednn_isa_cap()
    if cap is None:
        return frozenset()
    level = _LEVEL_NAMES.index(cap.level)
    above = {f for _, added in ONEDNN_ISA_LEVELS[level + 1:] for f in added}
    # every other AVX-512 or AMX extension (avx512_vbmi, amx_complex...) needs its level's base too
    above |= {f for f in flags if (f.startswith("avx512") and level < _LEVEL_NAMES.index("AVX512_CORE"))
              or (f.startswith("amx") and level < _LEVEL_NAMES.index("AVX512_CORE_AMX"))}
    return frozenset(above & flags)


def cpuinfo_field(name: str) -> str | None:
    """The first value /proc/cpuinfo gives ``name`` ("flags", "model name"), None where it gives none (not Linux):
    the one reader of the file, for the flags here and the CPU's model in the machine's fingerprint."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


@lru_cache(maxsize=1)
def cpuinfo_flags() -> frozenset[str]:
    """The CPU's own flags, whatever the libraries are told to use of them."""
    return frozenset((cpuinfo_field("flags") or "").split())


def cpu_flags() -> frozenset[str]:
    """The CPU's flags less those above the oneDNN cap ($ONEDNN_MAX_CPU_ISA): what torch's and OpenVINO's kernels use."""
    flags = cpuinfo_flags()
    return flags - _above_cap(flags)


def _cpu_lacks(features: tuple[str, ...]) -> bool:
    """True only when the flags are known and none of ``features`` is among them."""
    flags = cpu_flags()
    return bool(flags) and not any(f in flags for f in features)


def cpu_lacks_bf16() -> bool:
    return _cpu_lacks(BF16_ISA)


def cpu_lacks_int8_dot() -> bool:
    return _cpu_lacks(INT8_DOT_ISA)


def cap_hiding(features: tuple[str, ...]) -> OneDnnCap | None:
    """The oneDNN cap where it is what keeps ``features`` from the libraries: the CPU has one of them and the cap leaves
    it none; else None (no cap, the CPU has none of them, or the cap leaves one)."""
    cap = onednn_isa_cap()
    have = set(features) & cpuinfo_flags()
    return cap if cap and have and not have & cpu_flags() else None


def hidden_by_cap(features: tuple[str, ...]) -> str | None:
    """"ONEDNN_MAX_CPU_ISA=AVX2 hides this CPU's avx512_bf16 from oneDNN" where the oneDNN cap keeps ``features`` from
    the libraries (cap_hiding), else None. A message about features the libraries go without says this, not that "this
    CPU" lacks what it has."""
    cap = cap_hiding(features)
    if cap is None:
        return None
    return f"{cap} hides this CPU's {'/'.join(f for f in features if f in cpuinfo_flags())} from oneDNN"


def avx512_hidden_by_cap() -> OneDnnCap | None:
    """The oneDNN cap where it keeps this CPU's AVX-512 from the libraries (ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU),
    else None. OpenVINO's CPU plugin then crashes the process at some shapes, in a kernel of AVX-512 code it generated
    all the same (docs/cpu-features.md); on a CPU without AVX-512 such a cap changes nothing."""
    return cap_hiding(("avx512f",))


def int8_overflow_by_cpu() -> tuple[bool, str]:
    """Whether --overflow-fix auto fixes int8 overflow on this CPU (it lacks an int8 dot product), and why, as a quantized
    artifact records it: one reason for NNCF's and ONNX Runtime's quantizers alike."""
    if cpu_lacks_int8_dot():
        why = hidden_by_cap(INT8_DOT_ISA) or "this CPU has no VNNI/AMX int8 dot product"
        return True, f"auto: {why}, so 8-bit products would saturate at 16 bits"
    return False, "auto: this CPU has an int8 dot product (VNNI/AMX)"


def available_bytes() -> int | None:
    """The memory this machine has available (Linux's MemAvailable); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
