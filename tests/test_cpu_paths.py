"""Code paths that libraries choose by CPU feature, each forced so it runs on any x86 machine.

The machines this suite runs on differ (AVX2 only; AVX-512 with VNNI and BF16;
AMX), and a library that branches on a feature takes a path here that another
machine never sees. Every such branch we know of is listed in
docs/cpu-features.md with the test that holds it; the ones below force a
branch either way:

- up: bitsandbytes' AVX-512-BF16 nf4 path, whose failing step (repacking the
  weight) is Python that runs before any kernel, forced on by its own
  detection function, so the failure it had on AVX-512-BF16 CPUs reproduces on
  an AVX2 machine;
- either way: what OpenVINO reports it runs for a bf16 artifact (bf16 where
  the CPU has AVX-512-BF16 or AMX, fp32 elsewhere), replaced by each answer,
  so the manifest note, `sdopt inspect` and the load warning are checked for
  both kinds of CPU on any machine.

The AVX2 paths of torch, oneDNN and bitsandbytes are forced down (so an
AVX-512 machine runs them too) in tests/test_quant.py's fresh-process round
trip of every quantized CPU row. A CPU cannot be forced above what it has,
hence the Python-level forcing up here.
"""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest

from conftest import SMALL
from imaging import psnr

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.cli import main
from sdopt.hardware import cpu_lacks_int8_dot

try:
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules
    import torch

    from sdopt.quant import bnb as sdopt_bnb

    _NATIVE_BF16_KERNEL = bnb.functional.has_avx512bf16()  # what this CPU really has
except ImportError:  # the quant extra is absent: the bnb tests skip, the others run
    bnb = None

needs_bnb = pytest.mark.skipif(bnb is None, reason="bitsandbytes is the quant extra: pip install 'sdopt[quant]'")

REQUEST = {**SMALL, "steps": 2}
NF4_FLOOR = 25.0  # dB vs fp32, as tests/test_quant.py's bnb:nf4 floor (docs/quantization.md)


def _contents(path) -> tuple[dict, dict]:
    """A safetensors file's metadata and tensors as bytes (the header's key order varies between writes)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return f.metadata(), {k: _digest(f.get_tensor(k)) for k in f.keys()}


def _digest(tensor) -> tuple[str, str]:
    return str(tensor.dtype), hashlib.sha256(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def nf4_artifact(tiny_model, tmp_path_factory):
    from sdopt.quant.run import quantize

    out = tmp_path_factory.mktemp("cpu-paths") / "bnb-nf4"
    quantize(tiny_model, "nf4", out, backend="bnb")
    return out


@pytest.fixture
def force_avx512bf16(monkeypatch):
    """bitsandbytes' Linear4bit reads has_avx512bf16() in __init__: every layer built now takes its AVX-512-BF16 path."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def _repackable(layer) -> bool:
    # bitsandbytes' _convert_weight_packed_for_cpu: output rows in groups of 32, whole 64-blocks along the input.
    return layer.out_features % 32 == 0 and layer.in_features % 64 == 0


def _linear4bit_layers(pipe):
    for name, module in pipe.components["unet"].module.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            yield name, module


@needs_bnb
def test_nf4_generates_with_the_avx512bf16_path_forced_on(nf4_artifact, tiny_model, force_avx512bf16):
    # Before the fix: "RuntimeError: shape '[32, 0]' is invalid for input of size 16" in the repacking.
    pipe = sdopt.load(nf4_artifact)
    result = pipe.generate(GenerateRequest(**REQUEST))

    layers = dict(_linear4bit_layers(pipe))
    fits = {name for name, m in layers.items() if _repackable(m)}
    assert fits and fits != set(layers)  # the tiny model has both kinds: the test reaches both branches
    assert {name for name, m in layers.items() if sdopt_bnb.fits_cpu_packing(m)} == fits

    repacked = {name for name, m in layers.items() if getattr(m.weight.quant_state, "packing_format_for_cpu", False)}
    assert repacked == fits  # the forced path really ran, and only where the layout holds the weight
    if _NATIVE_BF16_KERNEL:  # elsewhere bitsandbytes has no kernel for that layout: numbers are meaningless
        reference = sdopt.load(tiny_model).generate(GenerateRequest(**REQUEST))
        assert psnr(result.images[0], reference.images[0]) >= NF4_FLOOR


@needs_bnb
def test_the_manifest_lists_the_layers_kept_off_the_cpu_kernel(nf4_artifact):
    data = json.loads((nf4_artifact / "sdopt.json").read_text())
    record = data["components"]["unet"]["quantization"]
    assert "AVX-512-BF16" in record["cpu_kernel"]
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in record["portable_layers"]  # 32 wide
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.to_q" not in record["portable_layers"]  # 64 wide


@needs_bnb
def test_inspect_names_the_layers_kept_off_the_cpu_kernel_only_where_there_are_some(nf4_artifact):
    """sd15's layers are all wide enough for the kernel, and inspect said "(0 Linear layer(s) too narrow for the
    AVX-512-BF16 kernel)" on both of its nf4 components."""
    from sdopt.inspect_artifact import describe, format_description

    d = describe(nf4_artifact)
    assert "too narrow for the AVX-512-BF16 kernel" in format_description(d)  # the tiny model has narrow layers
    for c in d["components"].values():
        if "portable_layers" in (c.get("quantization") or {}):
            c["quantization"]["portable_layers"] = []  # as sd15's record has them
    assert "too narrow" not in format_description(d)


@needs_bnb
def test_the_saved_weights_are_the_same_whichever_path_the_cpu_takes(nf4_artifact, tiny_model, tmp_path, monkeypatch):
    from sdopt.quant.run import quantize

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: not _NATIVE_BF16_KERNEL)  # the other CPU's choice
    other = tmp_path / "other-cpu"
    quantize(tiny_model, "nf4", other, backend="bnb")
    for folder in ("unet", "text_encoder"):
        assert _contents(other / folder / "quantized.safetensors") == _contents(nf4_artifact / folder / "quantized.safetensors")


@needs_bnb
def test_a_repacked_layer_is_never_saved(force_avx512bf16):
    from sdopt.quant import get_quantizer
    from sdopt.quant.schemes import lookup

    engine = get_quantizer("bnb").engine()
    module = torch.nn.Sequential(torch.nn.Linear(128, 64))
    module = engine.quantize(module, lookup("bnb", "nf4", "cpu"), ["0"], "cpu")
    layer = module.get_submodule("0")
    tensors, _ = engine.serialize(module, lookup("bnb", "nf4", "cpu"))  # before a forward: the portable layout
    assert "0.weight.absmax" in tensors
    # What Linear4bit.forward does first on an AVX-512-BF16 CPU (Python, so it runs on any CPU):
    layer.weight.data, layer.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(layer.weight.data, layer.weight.quant_state)
    with pytest.raises(SdoptError, match="CPU-kernel layout"):
        engine.serialize(module, lookup("bnb", "nf4", "cpu"))


# --- OpenVINO: the CPU plugin runs bf16 only where the CPU has AVX-512-BF16 or AMX --------------
@pytest.mark.slow
def test_openvino_bf16_says_what_runs_on_the_other_kind_of_cpu(tiny_model, tmp_path, monkeypatch, capsys):
    """The compiled model's own answer (INFERENCE_PRECISION_HINT) is replaced by the other kind of CPU's.

    This machine's own answer is checked by tests/test_openvino.py (test_bf16_manifest_says_what_actually_runs)."""
    ov = pytest.importorskip("openvino", reason="the openvino extra: pip install 'sdopt[openvino]'")
    import warnings

    import sdopt.export.openvino
    import sdopt.runtime.openvino as ov_runtime
    from sdopt.export.run import export
    from sdopt.manifest import read_manifest

    native_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    runs = "fp32" if native_bf16 else "bf16"
    monkeypatch.setattr(ov_runtime, "runs_precision", lambda compiled: runs)
    # the caps the check ran under are recorded with it (OpenVINO lists BF16 among the capabilities under AVX512_CORE too)
    monkeypatch.setattr(sdopt.export.openvino, "isa_caps", lambda: {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    out = tmp_path / "ov-bf16"
    export(tiny_model, "openvino", out, precision="bf16", height=64, width=64, batch=1)
    manifest = read_manifest(out)
    assert set(manifest.export["validated_on"]["runs"].values()) == {runs}
    assert manifest.export["validated_on"]["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    note = "runs bf16 on the export machine" if runs == "bf16" else "runs fp32: it lacks bf16 support"
    assert any(note in n for n in manifest.notes), manifest.notes
    assert main(["inspect", str(out)]) == 0
    assert note in capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdopt.load(out)
    assert any("runs fp32 where bf16 was asked" in str(w.message) for w in caught) == (runs == "fp32")


def _int8_images(request: dict, out: str, paths: list[str]) -> dict[str, list[str]]:
    """Generates with each artifact (out/0.png, out/1.png, ...); the int8 kernels OpenVINO chose for its UNet, by path."""
    import sdopt
    from sdopt import GenerateRequest

    kernels = {}
    for i, path in enumerate(paths):
        with sdopt.load(path) as pipe:
            pipe.generate(GenerateRequest(**request)).images[0].save(f"{out}/{i}.png")
            kernels[path] = sorted(k for k in pipe.components["unet"].kernels() if k.endswith(("I8", "i8")))
    return kernels


# The same in a child process, where ONEDNN_MAX_CPU_ISA can be set before OpenVINO loads.
_OPENVINO_INT8 = "import json, sys, warnings\nwarnings.simplefilter('ignore')\n" + inspect.getsource(_int8_images) + \
    "print(json.dumps(_int8_images(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:])))\n"


def test_openvino_int8_without_vnni_saturates_unless_the_overflow_fix_is_on(tiny_ov, tiny_pipeline, tmp_path, monkeypatch):
    """OpenVINO's int8 convolutions and matmuls take oneDNN's AVX2 kernels (u8 x s8 through vpmaddubsw, whose pairwise
    sums saturate at 16 bits) when oneDNN is capped at AVX2 (ONEDNN_MAX_CPU_ISA, which OpenVINO's oneDNN honours for
    them), so the branch `--overflow-fix auto` decides on runs on any x86 machine: with 7-bit weights everywhere
    (enable, what auto picks on such a CPU) the image is as good as on VNNI kernels; with NNCF's default (first layer
    only) it is worse. The kernels named prove the forcing took. (OpenVINO's int8 weight-compressed layers and bf16
    do not run under the cap: it chooses them by cpuid; docs/cpu-features.md.)"""
    pytest.importorskip("nncf", reason="the openvino extra: pip install 'sdopt[openvino]'")
    import os
    import subprocess
    import sys

    from PIL import Image

    import sdopt.quant.nncf as nncf_backend
    from sdopt.quant.run import quantize

    # Both artifacts calibrate on the same generations of tiny_ov (the overflow fix acts on the weights afterwards):
    # recorded once, for the second as for the first.
    recorded, record = {}, nncf_backend.record_inputs

    def record_once(*args, **kwargs):
        key = repr((args, kwargs))
        if key not in recorded:
            recorded[key] = record(*args, **kwargs)
        return recorded[key]

    monkeypatch.setattr(nncf_backend, "record_inputs", record_once)
    paths = []
    for fix in ("first-layer", "enable"):
        paths.append(tmp_path / fix)
        quantize(tiny_ov, "int8-static", paths[-1], backend="nncf", components=["unet"], options={"overflow_fix": fix}, progress=False)
    assert len(recorded) == 1  # the second quantization took the first's recording
    reference = tiny_pipeline.generate(GenerateRequest(**REQUEST)).images[0]
    quality, chosen = {}, {}
    # The CPU's own int8 kernels are the comparison only where they add into 32 bits (VNNI, AMX): on a CPU without
    # them they are the AVX2 ones already. In this process (the AVX2 run needs a child: the cap is read at OpenVINO's load).
    for isa in ("AVX2",) if cpu_lacks_int8_dot() else ("native", "AVX2"):
        out = tmp_path / isa
        out.mkdir()
        if isa == "native":
            kernels = _int8_images(REQUEST, str(out), list(map(str, paths)))
        else:
            proc = subprocess.run([sys.executable, "-c", _OPENVINO_INT8, json.dumps(REQUEST), str(out), *map(str, paths)],
                                  capture_output=True, text=True, env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa}, timeout=600)
            assert proc.returncode == 0, proc.stderr[-4000:]
            kernels = json.loads(proc.stdout.strip().splitlines()[-1])
            # the forcing took: AVX2 int8 kernels, none of AVX-512's
            assert all(any("avx2" in k for k in ks) and not any("avx512" in k for k in ks) for ks in kernels.values()), kernels
        quality[isa] = {fix: round(psnr(reference, Image.open(out / f"{i}.png")), 1) for i, fix in enumerate(("first-layer", "enable"))}
        chosen[isa] = kernels[str(paths[0])]
    print(f"\nint8-static UNet vs torch fp32, tiny model, dB: {quality}; int8 kernels: {chosen}")
    # Measured (AMD EPYC, AVX-512 VNNI): native 36.8 / 37.5, AVX2 kernels 31.7 / 36.0 (first-layer / enable).
    assert quality["AVX2"]["first-layer"] <= quality["AVX2"]["enable"] - 2.5  # saturated sums, which the fix avoids
    assert quality["AVX2"]["enable"] >= 33.0
    if "native" in quality:  # and on a CPU whose kernels do not saturate, the first-layer default holds: the AVX2 kernels' loss
        assert quality["AVX2"]["first-layer"] <= quality["native"]["first-layer"] - 3.0
        assert quality["AVX2"]["enable"] >= quality["native"]["enable"] - 2.0


def test_an_openvino_compile_failure_under_the_onednn_cap_says_to_unset_it(tiny_ov, monkeypatch):
    """Under ONEDNN_MAX_CPU_ISA=AVX2 OpenVINO compiles no bf16 or weight-compressed layer ("Supported primitive descriptors
    list is empty for node: Softmax", on a bf16 text encoder here): the error said only OpenVINO's line, not what caused it.
    The failure is stood in for: the variable must be set before OpenVINO loads, and a real one needs a bf16 export."""
    import openvino as ov

    import sdopt
    from sdopt.errors import SdoptError

    def fails(self, *args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:1:\nSupported primitive descriptors list is empty for node: Softmax")

    monkeypatch.setattr(ov.Core, "compile_model", fails)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    with pytest.raises(SdoptError) as plain:
        sdopt.load(tiny_ov)
    assert "Supported primitive descriptors list is empty" in str(plain.value) and "ONEDNN_MAX_CPU_ISA" not in str(plain.value)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(SdoptError, match="ONEDNN_MAX_CPU_ISA=AVX2 is set, under which OpenVINO compiles no bf16 or weight-compressed layers: unset it"):
        sdopt.load(tiny_ov)


@pytest.mark.parametrize("variable", ["DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA"])
def test_the_compile_failure_names_the_cap_by_either_of_its_names(tiny_ov, monkeypatch, variable):
    """DNNL_MAX_CPU_ISA=AVX2 (oneDNN's older name, which OpenVINO's and torch's oneDNN read as well) made a bf16 OpenVINO
    artifact fail with OpenVINO's line alone ("Supported primitive descriptors list is empty"): the hint looked for
    ONEDNN_MAX_CPU_ISA only. A value oneDNN does not know caps nothing, and is not blamed."""
    import openvino as ov

    import sdopt
    from sdopt.errors import SdoptError

    def fails(self, *args, **kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:1:\nSupported primitive descriptors list is empty for node: Softmax")

    monkeypatch.setattr(ov.Core, "compile_model", fails)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "AVX2")
    with pytest.raises(SdoptError, match=f"{variable}=AVX2 is set, under which OpenVINO compiles no bf16 or weight-compressed layers: unset it"):
        sdopt.load(tiny_ov)
    monkeypatch.setenv(variable, "not-an-isa")
    with pytest.raises(SdoptError) as unknown:
        sdopt.load(tiny_ov)
    assert "is set" not in str(unknown.value)


_AVX512_EPYC = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16"})


def test_an_openvino_export_under_a_cap_that_hides_avx512_is_refused_before_it_crashes(tiny_model, tiny_ov, tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (or AVX2_VNNI, AVX) on an AVX-512 CPU: `sdopt export --to openvino` ended in a segmentation
    fault (rc 139, not a word) while checking the fp32 UNet, whose check runs a 12x10 latent, a size OpenVINO 2026.4
    crashes at under that cap (docs/cpu-features.md). It is refused now, before any slow work, naming the variable. The
    CPU's flags are stood in for, so it holds on any x86 machine (tiny_ov: this process's oneDNN has run, and read no cap,
    before the variable is set, so the export the old code went on with cannot crash the suite)."""
    import sdopt.hardware
    from sdopt.export.run import export

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: _AVX512_EPYC)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(SdoptError, match="ONEDNN_MAX_CPU_ISA=AVX2 hides this CPU's AVX-512 .*segmentation fault.*: unset ONEDNN_MAX_CPU_ISA"):
        export(tiny_model, "openvino", tmp_path / "ov", progress=False)
    assert list(tmp_path.iterdir()) == []  # not even a temporary folder


@pytest.mark.skipif("avx512f" not in __import__("sdopt.hardware").hardware.cpuinfo_flags(), reason="the crash needs an AVX-512 CPU")
def test_the_refusal_comes_where_the_crash_came(tiny_model, tmp_path):
    """The same for real, in a child that loads OpenVINO under the cap: it crashed (rc 139) after ~20 s; now exit 2."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sdopt", "export", str(tiny_model), "--to", "openvino", "-o", str(tmp_path / "ov"), "-q"],
                          capture_output=True, text=True, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "ONEDNN_MAX_CPU_ISA=AVX2 hides this CPU's AVX-512" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cap, flags, warned", [("AVX2", _AVX512_EPYC, True), ("AVX", _AVX512_EPYC, True),
                                                ("AVX512_CORE", _AVX512_EPYC, False), ("AVX2", frozenset({"avx2", "fma"}), False)])
def test_loading_openvino_under_a_cap_that_hides_avx512_warns_first(tiny_ov, monkeypatch, cap, flags, warned):
    """Under such a cap `sdopt generate --height 96 --width 80` of an OpenVINO artifact segfaulted with no message (64x64
    ran): the load says so first, naming the variable. A cap at AVX512_CORE (which ran) or one on a CPU without AVX-512
    (where it changes nothing) is not blamed."""
    import warnings

    import sdopt.hardware

    monkeypatch.setattr(sdopt.hardware, "cpuinfo_flags", lambda: flags)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        sdopt.load(tiny_ov)
    crash = [str(w.message) for w in said if "segmentation fault" in str(w.message)]
    assert crash == ([f"ONEDNN_MAX_CPU_ISA={cap} hides this CPU's AVX-512 from oneDNN, and OpenVINO's CPU plugin then crashes the process "
                      "(segmentation fault) running a UNet at some image sizes: unset ONEDNN_MAX_CPU_ISA (docs/cpu-features.md)"] if warned else [])
