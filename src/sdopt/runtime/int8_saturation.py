"""A warning at load: int8-static weights quantized with all 8 bits, on a CPU whose int8 products can saturate.

u8 x s8 products on a CPU without an int8 dot product (no VNNI or AMX: AVX2, and AVX-512 before Cascade Lake) go
through vpmaddubsw, whose pairwise sums saturate at 16 bits; weights quantized to 7 bits cannot (NNCF's "overflow
fix", ONNX Runtime's reduce_range). Both quantizers record what they did as ``overflow_fix.mode``; an artifact made on
a CPU with the dot product (or asked to) has 8-bit weights, and loses accuracy where it is loaded on one without
(the SDXL toy lost 4.3 dB through OpenVINO).
"""

from __future__ import annotations

import warnings


def warn_if_int8_may_saturate(manifest, stacklevel: int = 4) -> None:
    """Warn where ``manifest``'s int8-static components have 8-bit weights and this CPU lacks an int8 dot product."""
    unfixed = {name: entry.quantization.get("backend", "nncf") for name, entry in manifest.components.items()
               if (entry.quantization or {}).get("scheme") == "int8-static"
               # an NNCF artifact from before the fix was recorded had NNCF's default: the first layer only
               and (entry.quantization.get("overflow_fix") or {}).get("mode", "first-layer") != "enable"}
    if not unfixed:
        return
    from sdopt.hardware import INT8_DOT_ISA, cpu_lacks_int8_dot, hidden_by_cap

    if cpu_lacks_int8_dot():
        backend = next(iter(unfixed.values()))
        where = hidden_by_cap(INT8_DOT_ISA) or "the CPU has no VNNI or AMX"  # under a oneDNN cap, the CPU has them
        warnings.warn(
            f"{', '.join(unfixed)}: int8 with 8-bit weights, where {where}: their int8 products can saturate (the SDXL "
            f"toy lost 4.3 dB): re-quantize with `sdopt quantize --backend {backend} --scheme int8-static "
            "--overflow-fix enable` (the default when quantized on such a CPU)",
            UserWarning,
            stacklevel=stacklevel,
        )
