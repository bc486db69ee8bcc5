"""What the bench's "of peak" is measured against: the probe's precision for each precision that ran, on either kind of CPU."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("lacks_bf16, probed", [(True, "fp32"), (False, "bf16")])
def test_bf16_is_measured_against_what_the_cpu_computes_it_in(monkeypatch, lacks_bf16, probed):
    """Forced both ways, whatever this machine has: emulated bf16 (AVX2) against fp32's ceiling, native bf16 against bf16's."""
    import sdopt.hardware
    from sdopt.bench.flops import probe_precision

    monkeypatch.setattr(sdopt.hardware, "cpu_lacks_bf16", lambda: lacks_bf16)
    got, why = probe_precision("bf16", "cpu")
    assert got == probed and (why is not None) == lacks_bf16
    assert probe_precision("bf16", "cuda") == ("bf16", None)


def test_int8_and_weight_only_schemes_pick_their_ceilings():
    from sdopt.bench.flops import probe_precision

    assert probe_precision("int8", "cpu") == ("int8", None)
    assert probe_precision("fp32", "cpu") == ("fp32", None)
    assert probe_precision("fp16", "cpu") == ("fp32", None)  # no fp16 compute on these CPUs
    assert probe_precision("nf4", "cuda") == ("fp16", None)


def test_the_int8_probe_runs_an_int8_matmul():
    pytest.importorskip("onnxruntime")
    from sdopt.bench.flops import matmul_peak_gflops

    peak = matmul_peak_gflops("int8", "cpu", seconds=0.2, sizes=(128, 256))
    assert peak["precision_probed"] == "int8" and "MatMulInteger" in peak["kernel"] and peak["gflops"] > 0


def test_an_int8_static_unet_is_measured_against_int8():
    from sdopt.bench.artifacts import Entry
    from sdopt.bench.assemble import _compute_precision
    from sdopt.manifest import ComponentEntry, Manifest

    def entry(scheme):
        unet = ComponentEntry(folder="unet", files=[], quantization={"scheme": scheme} if scheme else None)
        return Entry("x", None, Manifest(backend="openvino", precision="fp32", components={"unet": unet}))

    assert _compute_precision(entry("int8-static"), {"compute_precision": "fp32"}) == "int8"
    assert _compute_precision(entry("int4"), {"compute_precision": "fp32"}) == "fp32"
    assert _compute_precision(entry(None), {"compute_precision": "bf16"}) == "bf16"


def test_each_stage_is_measured_against_the_precision_it_ran_in():
    """An int8-static UNet beside a decoder whose weights only were compressed: two ceilings, one per stage."""
    from sdopt.bench.artifacts import Entry
    from sdopt.bench.assemble import _compute_precision
    from sdopt.manifest import ComponentEntry, Manifest

    components = {
        "unet": ComponentEntry(folder="unet", files=[], quantization={"scheme": "int8-static"}),
        "text_encoder": ComponentEntry(folder="text_encoder", files=[], quantization={"scheme": "int8", "weights_only": True}),
        "vae_decoder": ComponentEntry(folder="vae_decoder", files=[]),
    }
    entry = Entry("x", None, Manifest(backend="openvino", precision="bf16", components=components))
    raw = {"compute_precision": "int8", "runs_by_component": {"unet": "bf16", "text_encoder": "bf16", "vae_decoder": "fp32"}}
    assert _compute_precision(entry, raw, "unet") == "int8"
    assert _compute_precision(entry, raw, "text_encoder") == "bf16"  # int8 weights, bf16 compute
    assert _compute_precision(entry, raw, "vae_decoder") == "fp32"  # what the backend said it ran
    assert _compute_precision(entry, {}, "vae_decoder") == "bf16"  # nothing said: the artifact's precision
    # Nothing said, but the exporter recorded the component's own (an fp16 ONNX export keeps SDXL's VAE fp32).
    components["vae_decoder"].precision = "fp32"
    assert _compute_precision(entry, {}, "vae_decoder") == "fp32"
    # The runtime quantized the int8 weights' activations itself (OpenVINO's dynamic quantization): int8's ceiling.
    raw["computes_by_component"] = {"unet": "int8", "text_encoder": "int8", "vae_decoder": "fp32"}
    assert _compute_precision(entry, raw, "text_encoder") == "int8"
    assert _compute_precision(entry, raw, "vae_decoder") == "fp32"


def test_a_gpu_is_probed_on_matrices_big_enough_to_fill_it(monkeypatch):
    # On an H200 a 2048² fp16 product reads about half of what 8192² does: "of peak" needs the bigger one.
    from sdopt.bench import flops

    asked = {}
    monkeypatch.setattr(flops, "_float_peak", lambda probed, device, seconds, sizes: asked.setdefault(device, sizes) and {"gflops": 1.0})
    flops.matmul_peak_gflops("fp16", "cuda:0", seconds=0.1)
    flops.matmul_peak_gflops("fp32", "cpu", seconds=0.1)
    assert max(asked["cuda:0"]) >= 8192 and max(asked["cpu"]) == 2048  # a CPU's emulated precisions must stay small


@pytest.mark.parametrize("device", ["auto", "gpu", "npu", "openvino:CPU"])
def test_no_peak_is_probed_on_a_device_torch_has_no_name_for(device):
    """sdopt bench --device auto (OpenVINO's) ran every artifact, then the probe asked torch for a device named 'auto':
    a RuntimeError traceback and no report."""
    from sdopt.bench.assemble import probe_peaks

    assert probe_peaks(["fp32"], device) == {}
