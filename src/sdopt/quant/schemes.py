"""What each quantizer can do: the backend x scheme x device table, declared as data.

Every quantizer registration (sdopt.quant) carries its rows. The CLI
(`sdopt quantize --list`), the quantize command, the loader and the tests read
this table; nothing finds out by trying. Rows for a device that this project's
machines lack (CUDA) are declared from the libraries' documentation; those that
ran on a GPU once (RUN_ON_GPU) are marked tested, the others ``tested=False``.
The CPU rows are each exercised by tests/test_quant.py.

Rows are listed in order of preference: when ``--backend`` is omitted the first
supported row for the scheme and device wins.

Importing this module must stay cheap: it imports no torch and no quantization
library (tests/test_import_lean.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from sdopt.errors import SdoptError
from sdopt.runtime.backends import check_cuda_index, device_kind

# nncf int8-static's --overflow-fix values -> NNCF's OverflowFix member names ("auto" picks one by this CPU:
# sdopt.quant.nncf.choose_overflow_fix). Here, not beside it, so the CLI offers them without importing OpenVINO.
OVERFLOW_FIXES = {"enable": "ENABLE", "first-layer": "FIRST_LAYER", "disable": "DISABLE"}

# The schemes sdopt knows, and what each means. A quantizer may support a subset.
SCHEME_DESCRIPTIONS = {
    "int8": "8-bit integer weights, per output channel; activations stay in floating point",
    "int8-dynamic": "8-bit integer weights and activations, activation scales computed per call",
    "int8-static": "8-bit integer weights and activations, activation scales calibrated once",
    "int4": "4-bit integer weights, grouped scales; activations stay in floating point",
    "nf4": "4-bit NormalFloat weights (QLoRA's data type), blockwise scales",
    "fp8": "8-bit float (e4m3) weights; activations stay in floating point",
}

# Bits a quantized weight takes on disk, at least (scales, and what a scheme keeps in full precision, come on top):
# the quantize command's estimate of its output's size (sdopt.outputs.check_free_space).
SCHEME_BITS = {"int8": 8, "int8-dynamic": 8, "int8-static": 8, "int4": 4, "nf4": 4, "fp8": 8}
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Capability:
    """One row: can ``backend`` quantize with ``scheme`` for ``device``, and how."""

    backend: str
    scheme: str
    device: str  # "cpu" or "cuda"
    supported: bool
    reason: str  # why not, or what to know when it is supported
    serialized: bool = False  # quantized weights are stored; False: the recipe is, and loading quantizes
    layers: tuple[str, ...] = ()  # torch.nn layer types it quantizes, by class name
    tested: bool = False  # exercised by this project's tests (CPU), not only declared
    calibrated: bool = False  # needs data: activation ranges recorded while the source generates from prompts

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.scheme, self.device)


# CUDA rows that quantized, loaded and generated on an NVIDIA H100 (torch 2.11.0+cu130) with
# measure/cuda_roundtrip.py on 2026-11-26, PSNR vs fp32 on the same GPU as on the CPU (the log:
# docs/measurements/cuda_h100_roundtrip.txt). CI has no GPU: rerun that script on one after
# changing a quantizer. bnb int8 failed there (CPU scales after a move to the GPU); it is fixed
# since but not rerun on a GPU, so it stays declared only.
RUN_ON_GPU = {
    ("torchao", "int8"), ("torchao", "int8-dynamic"), ("torchao", "fp8"),
    ("quanto", "int8"), ("quanto", "int4"), ("quanto", "fp8"),
    ("bnb", "nf4"),
}


def rows(backend: str, *specs: tuple, calibrated: tuple[str, ...] = ()) -> tuple[Capability, ...]:
    """Compact row declarations: (scheme, device, supported, serialized, layers, reason); ``calibrated``
    names the schemes that calibrate on prompts.

    CPU rows are marked tested: every supported CPU row runs in tests/test_quant.py.
    CUDA rows are marked tested when they ran on a GPU (RUN_ON_GPU).
    """
    return tuple(
        Capability(backend, scheme, device, supported, reason, serialized, tuple(layers),
                   tested=device == "cpu" or (backend, scheme) in RUN_ON_GPU, calibrated=scheme in calibrated)
        for scheme, device, supported, serialized, layers, reason in specs
    )


LIN = ("Linear",)
LIN_CONV = ("Linear", "Conv2d")

# --- the rows of the three torch quantizers -----------------------------------------
# Measured with torch 2.13.0 (CPU), torchao 0.18.0, optimum-quanto 0.2.7, bitsandbytes 0.50.2;
# see docs/quantization.md for the sizes, speeds and PSNRs behind the notes.

QUANTO_ROWS = rows(
    "quanto",
    ("int8", "cpu", True, True, LIN_CONV, "qint8 weights per channel; Linear and Conv2d (all the UNet's weights)"),
    ("int8", "cuda", True, True, LIN_CONV, "qint8 weights per channel; Linear and Conv2d"),
    ("int8-dynamic", "cpu", False, False, (), "quanto quantizes activations only with calibrated static scales; use --backend torchao"),
    ("int8-dynamic", "cuda", False, False, (), "quanto quantizes activations only with calibrated static scales; use --backend torchao"),
    ("int4", "cpu", True, True, LIN_CONV, "qint4 weights, groups of 128 with scale and shift; Linear and Conv2d"),
    ("int4", "cuda", True, True, LIN_CONV, "qint4 weights, groups of 128; Linear and Conv2d (the first use builds quanto's CUDA kernels with ninja, minutes; docs/quantization.md)"),
    ("nf4", "cpu", False, False, (), "quanto has no NormalFloat type; use --backend bnb"),
    ("nf4", "cuda", False, False, (), "quanto has no NormalFloat type; use --backend bnb"),
    ("fp8", "cpu", True, True, LIN_CONV, "qfloat8 (e4m3) weights per channel, computed in fp32; Linear and Conv2d"),
    ("fp8", "cuda", True, True, LIN_CONV, "qfloat8 (e4m3) weights per channel; Linear and Conv2d"),
)

TORCHAO_ROWS = rows(
    "torchao",
    ("int8", "cpu", True, True, LIN_CONV, "Linear: Int8Tensor (int8 weight-only matmul); Conv2d: IntxUnpackedToInt8Tensor per channel"),
    ("int8", "cuda", True, True, LIN_CONV, "Linear: Int8Tensor; Conv2d: IntxUnpackedToInt8Tensor per channel"),
    ("int8-dynamic", "cpu", True, True, LIN_CONV, "Linear: int8 activations x int8 weights (Int8Tensor); Conv2d: int8 weight-only (torchao has no dynamic int8 conv)"),
    ("int8-dynamic", "cuda", True, True, LIN_CONV, "Linear: int8 activations x int8 weights; Conv2d: int8 weight-only"),
    ("int4", "cpu", False, False, (), "torchao 0.18's packed int4 layouts need CUDA kernels (mslk, tinygemm); its CPU int4 (Intx) stores a byte per weight, no smaller than int8: use --backend quanto"),
    ("int4", "cuda", False, False, (), "torchao 0.18's int4 needs bf16 activations (tile-packed) or the mslk kernels; sdopt runs quantized components in fp32: use --backend quanto"),
    ("nf4", "cpu", False, False, (), "torchao's NF4Tensor is a QLoRA training type with no quantize_ config or safetensors support; use --backend bnb"),
    ("nf4", "cuda", False, False, (), "torchao's NF4Tensor is a QLoRA training type with no quantize_ config or safetensors support; use --backend bnb"),
    ("fp8", "cpu", True, True, LIN, "Float8Tensor weights on Linear only (fp8 conv needs the mslk CUDA kernels), computed in fp32"),
    ("fp8", "cuda", True, True, LIN, "Float8Tensor weights on Linear only (fp8 matmuls need compute capability 8.9+)"),
)

BNB_ROWS = rows(
    "bnb",
    ("int8", "cpu", True, True, LIN, "LLM.int8 weights (Linear8bitLt, no outlier threshold; the CPU matmul casts activations to fp16) on Linear only: convolutions stay fp32"),
    ("int8", "cuda", True, True, LIN, "LLM.int8 weights (Linear8bitLt) on Linear only"),
    ("int8-dynamic", "cpu", False, False, (), "bitsandbytes has no separate dynamic-activation scheme; use --backend torchao"),
    ("int8-dynamic", "cuda", False, False, (), "bitsandbytes has no separate dynamic-activation scheme; use --backend torchao"),
    ("int4", "cpu", False, False, (), "bitsandbytes' 4-bit types are nf4 and fp4, not integers: use --scheme nf4, or --backend quanto"),
    ("int4", "cuda", False, False, (), "bitsandbytes' 4-bit types are nf4 and fp4, not integers: use --scheme nf4"),
    ("nf4", "cpu", True, True, LIN_CONV, "nf4, blocks of 64, nested statistics, computed in fp32: Linear4bit; Conv2d as sdopt's Conv2d4bit (bnb's nf4 weight, dequantized per call)"),
    ("nf4", "cuda", True, True, LIN_CONV, "nf4, blocks of 64: Linear4bit; Conv2d as sdopt's Conv2d4bit (bnb's nf4 weight, dequantized per call)"),
    ("fp8", "cpu", False, False, (), "bitsandbytes has no fp8 weight type; use --backend quanto"),
    ("fp8", "cuda", False, False, (), "bitsandbytes has no fp8 weight type; use --backend quanto or torchao"),
)


# --- reading the table -----------------------------------------------------------------
def table() -> list[Capability]:
    """Every registered quantizer's rows, in registration order."""
    from sdopt.quant import QUANTIZERS

    return [row for q in QUANTIZERS.values() for row in q.capabilities]


def known_schemes(artifact_backend: str | None = None) -> list[str]:
    from sdopt.quant import QUANTIZERS

    seen: dict[str, None] = {}
    for q in QUANTIZERS.values():
        if artifact_backend is None or q.accepts == artifact_backend:
            for row in q.capabilities:
                seen.setdefault(row.scheme)
    return list(seen)


def check_device(device: str) -> str:
    kind = device_kind(device)
    if kind not in DEVICES:
        raise SdoptError(f"unknown device '{device}'; quantized artifacts are made for: {', '.join(DEVICES)} (e.g. cuda:0)")
    check_cuda_index(device)
    return kind


def check_scheme(scheme: str) -> None:
    schemes = known_schemes()
    if scheme not in schemes:
        raise SdoptError(f"unknown scheme '{scheme}'; known schemes: {', '.join(schemes)} (see `sdopt quantize --list`)")


def lookup(backend: str, scheme: str, device: str) -> Capability:
    """The row for a combination; an unsupported one raises with the table's reason."""
    check_scheme(scheme)
    kind = check_device(device)
    from sdopt.quant import get_quantizer

    quantizer = get_quantizer(backend)
    row = next((r for r in quantizer.capabilities if r.scheme == scheme and r.device == kind), None)
    if row is None or not row.supported:
        own = [r.scheme for r in quantizer.capabilities if r.device == kind and r.supported]
        why = row.reason if row else f"the {backend} quantizer declares no {scheme} on {kind}" + (f" (it takes {', '.join(own)})" if own else "")
        # Only quantizers of the same kind of artifact: the others cannot take what this one was asked to quantize.
        others = [r.backend for r in supported(scheme, kind, accepts=quantizer.accepts)]
        hint = (f"; {scheme} on {kind} is supported by: {', '.join(others)}" if others
                else f"; no backend here quantizes {quantizer.accepts} artifacts with {scheme} on {kind}")
        raise SdoptError(f"--backend {backend} --scheme {scheme} on {kind} is not supported: {why}{hint}")
    return row


def supported(scheme: str, device: str, accepts: str | None = None) -> list[Capability]:
    from sdopt.quant import QUANTIZERS

    kind = device_kind(device)
    return [
        r
        for q in QUANTIZERS.values()
        if accepts is None or q.accepts == accepts
        for r in q.capabilities
        if r.scheme == scheme and r.device == kind and r.supported
    ]


def choose(scheme: str, device: str, accepts: str) -> Capability:
    """The preferred supported row for scheme and device among quantizers of ``accepts`` artifacts.

    Installed quantizers come first (found, not imported); when none is, the
    preferred one is named and loading it says which extra to install.
    """
    from sdopt.quant import QUANTIZERS

    check_scheme(scheme)
    kind = check_device(device)
    if accepts not in {q.accepts for q in QUANTIZERS.values()}:  # no quantizer reads this kind of artifact at all
        takers = " or ".join(sorted({q.accepts for q in QUANTIZERS.values()}))
        raise SdoptError(f"sdopt quantizes {takers} artifacts, not {accepts} ones: quantize the Diffusers checkpoint "
                         "(sdopt quantize MODEL), or export to OpenVINO and quantize that (--backend nncf)")
    found = supported(scheme, kind, accepts)
    found = [r for r in found if QUANTIZERS[r.backend].available()] or found
    if not found:
        # Only the quantizers of this kind of artifact: why a torch quantizer lacks a scheme says nothing of an ONNX artifact.
        declared = [r for r in table() if r.scheme == scheme and r.device == kind and QUANTIZERS[r.backend].accepts == accepts]
        why = "; ".join(f"{r.backend}: {r.reason}" for r in declared)
        offered = sorted({f"{r.scheme} (--backend {r.backend})" for r in table()
                          if r.device == kind and r.supported and QUANTIZERS[r.backend].accepts == accepts})
        raise SdoptError(f"no backend quantizes {accepts} artifacts with {scheme} on {kind}" + (f" ({why})" if why else "")
                         + (f"; they take {', '.join(offered)}" if offered else "")
                         + (", or quantize the Diffusers checkpoint (sdopt quantize MODEL)" if accepts != "torch" else "")
                         + _exported_first(scheme, kind, accepts))
    return found[0]


def _exported_first(scheme: str, kind: str, accepts: str) -> str:
    """Where the scheme is another kind of artifact's (int8-static: an OpenVINO or ONNX export's), the export to make
    first: the refusal listed only the schemes of the artifact given."""
    from sdopt.export import EXPORTERS
    from sdopt.quant import QUANTIZERS

    takers = sorted({(QUANTIZERS[r.backend].accepts, r.backend) for r in table()
                     if r.scheme == scheme and r.device == kind and r.supported and QUANTIZERS[r.backend].accepts != accepts})
    targets = {exporter.backend: target for target, exporter in EXPORTERS.items()}
    ways = [f"sdopt export MODEL --to {targets[taker]}, then sdopt quantize it --scheme {scheme} --backend {backend}"
            for taker, backend in takers if taker in targets]
    return f". {scheme} is taken by an export: {'; or '.join(ways)}" if ways else ""


def format_table(capabilities: Iterable[Capability] | None = None) -> str:
    """The table as `sdopt quantize --list` prints it."""
    caps = list(table() if capabilities is None else capabilities)
    from sdopt.quant import QUANTIZERS

    head = ("backend", "scheme", "device", "supported", "stored", "layers", "notes")
    body = []
    for r in caps:
        q = QUANTIZERS.get(r.backend)
        body.append(
            (
                r.backend,
                r.scheme,
                r.device,
                ("yes" if r.supported else "no") + ("" if r.tested or not r.supported else "*"),
                ("weights" if r.serialized else "recipe") if r.supported else "-",
                "+".join(r.layers) or "-",
                r.reason + (f" [{q.accepts} artifacts]" if q and q.accepts != "torch" else ""),
            )
        )
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in (head, *body)]
    lines.append("")
    lines.append("stored: weights = the quantized weights are saved and loaded as they are; recipe = quantized again at load")
    lines.append("yes* = declared from the library's documentation, not yet run by this project (CPU rows run in the tests; CUDA rows ran once on an H100)")
    lines.append("schemes: " + "; ".join(f"{k}: {v}" for k, v in SCHEME_DESCRIPTIONS.items() if k in known_schemes()))
    return "\n".join(lines)
