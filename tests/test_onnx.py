"""ONNX export and the ONNX Runtime backend, on the tiny zoo model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import sdopt  # noqa: E402
from sdopt import GenerateRequest, SdoptError  # noqa: E402
from sdopt.cli import main  # noqa: E402
from sdopt.export.run import export  # noqa: E402
from sdopt.manifest import MANIFEST_NAME, read_manifest  # noqa: E402

from conftest import SMALL  # noqa: E402
from imaging import psnr  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tiny_onnx_artifact):
    """The session's one ONNX export of the tiny model (conftest), shared with the bench: read, never changed."""
    return tiny_onnx_artifact


def test_layout_follows_optimum(tiny_onnx):
    for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (tiny_onnx / name / "model.onnx").is_file()
        assert (tiny_onnx / name / "config.json").is_file()
    for path in ("model_index.json", "tokenizer/vocab.json", "scheduler/scheduler_config.json", MANIFEST_NAME):
        assert (tiny_onnx / path).is_file()
    index = json.loads((tiny_onnx / "model_index.json").read_text())
    assert "vae_decoder" in index and "vae" not in index


def test_graphs_have_dynamic_batch_and_spatial_axes(tiny_onnx):
    import onnx

    unet = onnx.load(str(tiny_onnx / "unet" / "model.onnx"), load_external_data=False)
    sample = next(i for i in unet.graph.input if i.name == "sample")
    dims = [d.dim_param or d.dim_value for d in sample.type.tensor_type.shape.dim]
    assert dims == ["batch_size", 4, "height", "width"]


def test_manifest_records_parity_within_tolerance(tiny_onnx):
    m = read_manifest(tiny_onnx)
    assert m.backend == "onnxruntime" and m.precision == "fp32"
    assert set(m.parity) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    for name, p in m.parity.items():
        print(f"{name}: max abs {p['max_abs']:.2e}, max rel {p['max_rel']:.2e}")
        assert p["passed"] and p["max_rel"] <= p["tolerance"]
    assert m.export["opset"] == 18


def test_skip_validation_keeps_a_failed_component_and_records_its_parity(tiny_model, tmp_path, monkeypatch, capsys):
    """Parity over its tolerance fails the export; --skip-validation keeps it, with the parity measured and recorded
    (it skipped the measurement, so the manifest never said by how much) and a note."""
    from sdopt.export import onnx as onnx_export

    real = onnx_export.compare
    monkeypatch.setattr(onnx_export, "compare", lambda reference, got, tolerance: real(reference, got, -1.0))  # everything fails
    with pytest.raises(SdoptError, match="text_encoder: the exported graph differs from PyTorch by .* over the fp32 tolerance -1"):
        export(tiny_model, "onnx", tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    kept = tmp_path / "kept"
    export(tiny_model, "onnx", kept, progress=False, skip_validation=True)
    manifest = read_manifest(kept)
    assert all(not p["passed"] and p["accepted"] == "--skip-validation" and p["max_rel"] >= 0 for p in manifest.parity.values())
    assert any("unet: the exported graph differs from PyTorch" in n and "kept (--skip-validation)" in n for n in manifest.notes)
    assert main(["inspect", str(kept)]) == 0
    assert "FAILED, kept (--skip-validation)" in capsys.readouterr().out


def test_onnx_artifact_cannot_change_precision_at_load(tiny_onnx):
    # fp16: the ONNX export writes it, so that is the advice; bf16: it does not, so the exports that do are named.
    with pytest.raises(SdoptError, match="Export it again with precision='fp16'"):
        sdopt.load(tiny_onnx, precision="fp16")
    with pytest.raises(SdoptError, match="sdopt exports no onnxruntime artifact in bf16: export for openvino or tensorrt instead"):
        sdopt.load(tiny_onnx, precision="bf16")


# --- bad input -------------------------------------------------------------------------
def test_model_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert main(["export", str(tmp_path / "notes"), "--to", "onnx", "-o", str(tmp_path / "out")]) == 2
    assert "is not an sdopt artifact" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_exporting_an_exported_artifact_is_refused(tiny_onnx, tmp_path, capsys):
    assert main(["export", str(tiny_onnx), "--to", "onnx", "-o", str(tmp_path / "again")]) == 2
    assert "export from the original PyTorch" in capsys.readouterr().err


def test_existing_output_needs_force(tiny_model, tiny_onnx, capsys):
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tiny_onnx)]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    read_manifest(tiny_onnx)  # untouched


def test_unwritable_output(tiny_model, tmp_path, capsys):
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses even root
        target = "/proc/sdopt-test/out"
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        target = str(tmp_path / "locked" / "out")
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", target]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_output_under_a_file_is_refused(tiny_model, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "afile" / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    # Missing folders between (made at the end): the file was said "not writable", which chmod would not cure.
    assert main(["export", str(tiny_model), "--to", "onnx", "-o", str(tmp_path / "afile" / "sub" / "out")]) == 2
    assert f"{tmp_path / 'afile'} is not a folder" in capsys.readouterr().err


def test_unknown_target_lists_the_known_ones(tiny_model, tmp_path, capsys):
    assert main(["export", str(tiny_model), "--to", "coreml", "-o", str(tmp_path / "o")]) == 2
    assert "known targets: " in capsys.readouterr().err


@pytest.mark.slow
def test_a_terminated_export_cleans_up_on_the_way_out(tiny_model, tmp_path):
    """SIGTERM midway: nothing at the output path, no temporary folder left. (SIGKILL, which cannot clean up,
    at random points: tests/test_guarantees.py, which checks what it leaves is refused as unfinished.)"""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdopt.cli", "export", str(tiny_model), "--to", "onnx", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until the export has started writing its temporary folder, then kill it midway.
    deadline = time.time() + 120
    started = lambda: any(p.name.startswith(".killed.tmp-") and (p / "text_encoder").exists() for p in tmp_path.iterdir())  # noqa: E731
    while time.time() < deadline and not started():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert started(), "the export never started writing: the kill would prove nothing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".killed.tmp-")] == []


@pytest.mark.skipif(not os.environ.get("SDOPT_OPTIMUM_CLI"), reason="set SDOPT_OPTIMUM_CLI to an optimum-cli executable (docs/onnx.md)")
def test_a_real_optimum_export_of_our_checkpoint_loads_and_agrees(tiny_model, tiny_pipeline, tmp_path):
    """Optimum's exporter opens our zoo checkpoint, and sdopt runs what it writes."""
    out = tmp_path / "optimum"
    subprocess.run(
        [os.environ["SDOPT_OPTIMUM_CLI"], "export", "onnx", "--model", str(tiny_model), "--task", "text-to-image", str(out)],
        check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )
    assert read_manifest(out).inferred
    # DDIM: Optimum rewrites scheduler_config.json with timestep_spacing="leading" spelled out, which
    # Euler (default "linspace") would honour differently; DDIM's default is "leading" either way.
    request = GenerateRequest(**SMALL, scheduler="ddim")
    value = psnr(tiny_pipeline.generate(request).images[0], sdopt.load(out).generate(request).images[0])
    print(f"Optimum export vs torch fp32 PSNR {value:.1f} dB")
    assert value >= 40


def test_fp16_export_is_finite_not_black_and_close(tiny_model, tiny_pipeline, tmp_path):
    out = tmp_path / "fp16"
    manifest = export(tiny_model, "onnx", out, precision="fp16")
    assert manifest.precision == "fp16" and all(p["passed"] for p in manifest.parity.values())
    assert "LayerNormalization" in manifest.export["fp16"]["unet"]["fp32_ops"]
    request = GenerateRequest(**SMALL, scheduler="euler")
    result = sdopt.load(out).generate(request)
    image = np.asarray(result.images[0])
    assert np.isfinite(result.latents).all() and image.max() > 0  # not NaN, not black
    value = psnr(tiny_pipeline.generate(request).images[0], image)
    print(f"ONNX fp16 vs torch fp32 PSNR {value:.1f} dB")
    assert value >= 25


def test_optimize_is_applied_and_recorded(tiny_model, tmp_path):
    out = tmp_path / "optimized"
    manifest = export(tiny_model, "onnx", out, optimize=True)
    info = manifest.export["optimizations"]["unet"]
    assert info["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert info["nodes_after"] < info["nodes_before"]
    assert all(p["passed"] for p in manifest.parity.values())  # validated after optimizing


def _per_weight_graph(folder):
    """A small graph saved as the tracer saves one past 2 GB: a file per weight beside model.onnx."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w_big": rng.standard_normal((512, 640)).astype(np.float32),  # 1.25 MiB: page-aligned in the data file
               "w_small": rng.standard_normal((640, 3)).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_big"], ["h"]), helper.make_node("MatMul", ["h", "w_small"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folder.mkdir()
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    return folder / "model.onnx"


def test_traced_weights_are_streamed_into_one_data_file(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx.external_data_helper import ExternalDataInfo

    from sdopt.export.onnx_external import EXTERNAL_DATA, move_graph

    raw = _per_weight_graph(tmp_path / "staging")
    assert len(list(raw.parent.iterdir())) == 3  # model.onnx and a file per weight
    x = np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)
    before = ort.InferenceSession(str(raw)).run(None, {"x": x})[0]
    final = tmp_path / "out" / "unet" / "model.onnx"
    move_graph(raw, final)
    assert list(raw.parent.iterdir()) == []  # each weight file removed once copied
    assert sorted(p.name for p in final.parent.iterdir()) == ["model.onnx", EXTERNAL_DATA]
    graph = onnx.load(str(final), load_external_data=False)
    infos = {t.name: ExternalDataInfo(t) for t in graph.graph.initializer}
    assert {i.location for i in infos.values()} == {EXTERNAL_DATA}
    assert infos["w_big"].offset % 4096 == 0
    after = ort.InferenceSession(str(final)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_export_holds_one_module_at_a_time(tiny_model, tmp_path, monkeypatch):
    """Each component's module is freed before the next is loaded: what lets the 10 GB SDXL UNet export in 24 GiB."""
    import gc
    import weakref

    import sdopt.runtime.torch as torch_runtime

    loaded, alive_at_load = [], []
    real = torch_runtime.load_module

    def counting(*args, **kwargs):
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        module = real(*args, **kwargs)
        loaded.append(weakref.ref(module))
        return module

    monkeypatch.setattr(torch_runtime, "load_module", counting)
    export(tiny_model, "onnx", tmp_path / "one-at-a-time")
    assert len(alive_at_load) == 4 and alive_at_load == [0, 0, 0, 0]


def test_a_request_whose_attention_would_not_fit_in_memory_is_refused_before_it_runs(tiny_model, tiny_onnx_artifact, tiny_onnx_plain, monkeypatch):
    """An ONNX graph whose attention is MatMul, Softmax, MatMul (exported --no-rewrites, or before attention_fused)
    holds each attention's whole score matrix on a CPU (sdopt.runtime.attention_memory): AUTOMATIC1111's default hires
    pass (1024²) had the kernel kill the server at 23 GB. The estimate, against what is available; head by head counts
    one head's; the default export's fused attention none."""
    import json

    import sdopt
    from sdopt import GenerateRequest, SdoptError
    from sdopt.runtime import attention_memory

    config = json.loads((tiny_model / "unet" / "config.json").read_text())
    assert attention_memory.score_bytes(config, 2, 512, 512, 8) == 2 * 8 * 4096**2 * 4  # 8 heads at the full 64x64 latent
    assert attention_memory.score_bytes(config, 2, 512, 512, 8, {"attention_by_head": 6}) == 2 * 4096**2 * 4
    assert attention_memory.score_bytes(config, 2, 512, 512, 8, {"attention_by_head": 6, "attention_fused": 6}) == 2 * 4096**2 * 4  # cross-attention fused
    assert attention_memory.score_bytes(config, 2, 1024, 1024, 8, {"attention_fused": 12}) == 0
    sdxl_like = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "attention_head_dim": [5, 10, 20]}
    assert attention_memory.score_bytes(sdxl_like, 2, 1024, 1024, 8) == 2 * 10 * 4096**2 * 4  # its first attention: level 1, 10 heads
    monkeypatch.setattr(attention_memory, "available_bytes", lambda: 100 * 2**20)  # 100 MiB; 3 x 64 MiB needed at 256²
    onnx = sdopt.load(tiny_onnx_plain)
    with pytest.raises(SdoptError, match=r"a 256x256 request \(1 image, guided: the UNet runs twice that\) would need about 0\.2 GiB.*OpenVINO or torch.*without --no-rewrites"):
        onnx.generate(GenerateRequest(prompt="a fox", steps=1, height=256, width=256))
    onnx.check_request(GenerateRequest(prompt="a fox", steps=1, height=256, width=256, guidance_scale=1.0, num_images=1))  # 96 MiB: fits
    sdopt.load(tiny_model).check_request(GenerateRequest(prompt="a fox", steps=1, height=256, width=256))  # torch: no such matrix
    sdopt.load(tiny_onnx_artifact).check_request(GenerateRequest(prompt="a fox", steps=1, height=256, width=256))  # fused: none either


def test_attention_by_head_exports_the_same_unet_and_its_memory_estimate_is_one_heads(tiny_model, tiny_onnx_artifact, tmp_path, monkeypatch):
    """sdopt export --rewrite attention_by_head: the UNet's self-attention a head at a time (sdopt.rewrite.attention) —
    the export's parity check holds it to fp32 tolerance, the images are the default export's, and the memory guard
    counts one head's scores (measured: 3.52 -> 1.16 GiB at 512², measure/attention_memory.py). Asked for, it takes
    the self-attention; the ONNX target's default attention_fused still takes the cross-attention."""
    import json

    import numpy as np

    import sdopt
    from sdopt import GenerateRequest
    from sdopt.cli import main
    from sdopt.runtime import attention_memory

    out = tmp_path / "by-head"
    # Named after attention_fused (the target's default, named too), attention_by_head still takes the self-attention.
    assert main(["export", str(tiny_model), "--to", "onnx", "--rewrite", "attention_fused", "--rewrite", "attention_by_head", "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "sdopt.json").read_text())
    assert manifest["export"]["rewrites"]["unet"]["attention_by_head"] == 6  # its transformer blocks: 2 down, 1 mid, 3 up
    assert manifest["export"]["rewrites"]["unet"]["attention_fused"] == 6  # and their cross-attentions
    assert manifest["parity"]["unet"]["passed"] and manifest["parity"]["unet"]["max_abs"] < 1e-4
    request = GenerateRequest(prompt="a red fox", steps=3, negative_prompt="blurry")
    by_head, fused = sdopt.load(out).generate(request), sdopt.load(tiny_onnx_artifact).generate(request)
    assert np.abs(by_head.latents - fused.latents).max() < 1e-4
    monkeypatch.setattr(attention_memory, "available_bytes", lambda: 20 * 2**20)  # 3 x 8 MiB (one head at 256²) does not fit
    with pytest.raises(sdopt.SdoptError, match="would need about"):
        sdopt.load(out).check_request(GenerateRequest(prompt="a fox", steps=1, height=256, width=256))
    monkeypatch.setattr(attention_memory, "available_bytes", lambda: 30 * 2**20)  # it does now
    sdopt.load(out).check_request(GenerateRequest(prompt="a fox", steps=1, height=256, width=256))


def test_the_onnx_export_fuses_attention_into_onnx_runtimes_own_operator_by_default(tiny_model, tiny_onnx_artifact):
    """ONNX exports give every attention of the UNet and the VAE to one com.microsoft MultiHeadAttention node (flash
    attention on a CPU, no N x N score matrix: measured 3.52 -> 0.64 GiB at 512², measure/attention_memory.py; sd15 at
    512²: 12.0 -> 8.1 GiB) unless told --no-rewrites; the export's parity check holds it to fp32 tolerance and the
    images are torch's."""
    import json

    import numpy as np
    import onnx

    import sdopt
    from sdopt import GenerateRequest

    manifest = json.loads((tiny_onnx_artifact / "sdopt.json").read_text())
    rewrites = manifest["export"]["rewrites"]
    assert rewrites["unet"]["attention_fused"] == 12  # 6 transformer blocks, a self- and a cross-attention each
    assert rewrites["vae_decoder"]["attention_fused"] == rewrites["vae_encoder"]["attention_fused"] == 1  # each half's mid block
    for name, count in (("unet", 12), ("vae_decoder", 1), ("vae_encoder", 1)):
        graph = onnx.load(str(tiny_onnx_artifact / name / "model.onnx"), load_external_data=False)
        fused = [n for n in graph.graph.node if n.op_type == "MultiHeadAttention"]
        assert len(fused) == count and {n.domain for n in fused} == {"com.microsoft"}, name
        assert not [n for n in graph.graph.node if n.op_type == "Softmax"], name  # no attention left as MatMul, Softmax, MatMul
    assert all(manifest["parity"][name]["passed"] and manifest["parity"][name]["max_abs"] < 1e-4 for name in manifest["parity"])
    request = GenerateRequest(prompt="a red fox", steps=3, negative_prompt="blurry")
    got, reference = sdopt.load(tiny_onnx_artifact).generate(request), sdopt.load(tiny_model).generate(request)
    assert np.abs(got.latents - reference.latents).max() < 1e-4
    assert np.abs(np.asarray(got.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int)).max() <= 1


def test_attention_fused_is_refused_for_targets_that_cannot_run_it(tiny_model, tmp_path):
    """ONNX Runtime's contrib operator: OpenVINO's and TensorRT's exports cannot hold it; refused before any work."""
    from sdopt.errors import SdoptError
    from sdopt.export.run import export

    with pytest.raises(SdoptError, match=r"--rewrite attention_fused is for --to onnx only"):
        export(tiny_model, "openvino", tmp_path / "x", rewrite=["attention_fused"])
    assert not (tmp_path / "x").exists()


def test_onnx_runtime_quantizes_an_onnx_artifact_int8_static(tiny_model, tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """sdopt quantize ONNX_ARTIFACT --scheme int8-static: ONNX Runtime's quantizer (QDQ, calibrated on the same runs as
    NNCF's) on the UNet; the fused attention stays float; what it left is said and copied as it was; the images stay
    close to the float artifact's (measured on the tiny model: 32.6 and 36.9 dB on two seeds; sd15 in docs/onnx.md)."""
    import json

    import numpy as np
    import onnx

    import sdopt
    import sdopt.hardware
    from sdopt import GenerateRequest
    from sdopt.cli import main

    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_onnx_artifact), "--scheme", "int8-static", "-o", str(out), "-q"]) == 0
    assert "backend: onnxruntime" in capsys.readouterr().err  # the only quantizer of ONNX artifacts, chosen (a note: stderr)
    manifest = json.loads((out / "sdopt.json").read_text())
    record = manifest["components"]["unet"]["quantization"]
    assert record["backend"] == "onnxruntime" and record["scheme"] == "int8-static" and not record["weights_only"]
    # 8 prompts, a sample per UNet call (the checkpoint's PNDM calls it once more than its steps)
    assert record["layers"] > 20 and record["calibration"]["samples"] >= 8 * record["calibration"]["steps_per_prompt"]
    assert record["overflow_fix"]["reduce_range"] is sdopt.hardware.cpu_lacks_int8_dot()  # auto, by this CPU
    graph = onnx.load(str(out / "unet" / "model.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("MultiHeadAttention") == 12  # attention stays ORT's float operator
    assert (out / "text_encoder" / "model.onnx").read_bytes() == (tiny_onnx_artifact / "text_encoder" / "model.onnx").read_bytes()
    assert any("text_encoder is not quantized" in note for note in manifest["notes"])
    pipe, float_pipe = sdopt.load(out), sdopt.load(tiny_onnx_artifact)
    request = GenerateRequest(prompt="a red circle on the left", steps=4, seed=0)
    got, want = (np.asarray(p.generate(request).images[0], dtype=float) for p in (pipe, float_pipe))
    assert 10 * np.log10(255**2 / ((got - want) ** 2).mean()) > 25
    # Loaded on a CPU whose int8 products can saturate (no VNNI/AMX), 8-bit weights warn; forced here whatever this CPU has.
    if not record["overflow_fix"]["reduce_range"]:
        monkeypatch.setattr(sdopt.hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
        with pytest.warns(UserWarning, match="unet: int8 with 8-bit weights.*--backend onnxruntime --scheme int8-static --overflow-fix enable"):
            sdopt.load(out)


def test_an_interrupted_onnx_runtime_int8_leaves_its_source_artifact_as_it_was(tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """ONNX Runtime's quantizer writes a shape-inferred copy beside the graph it is given and removes it only when it
    gets that far: Ctrl-C at that moment (simulated here while it reads the copy back) left ``unet/model-inferred.onnx``
    in the source artifact, which every reader then refused. It now works on links under the output's temporary folder."""
    import onnx

    source = tmp_path / "source"
    shutil.copytree(tiny_onnx_artifact, source)
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    load = onnx.load

    def interrupted_at_the_inferred_copy(path, *args, **kwargs):
        if str(path).endswith("-inferred.onnx"):
            raise KeyboardInterrupt
        return load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", interrupted_at_the_inferred_copy)
    assert main(["quantize", str(source), "--scheme", "int8-static", "-o", str(tmp_path / "int8"), "-q"]) == 130
    monkeypatch.undo()
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    assert main(["inspect", str(source)]) == 0
    assert not (tmp_path / "int8").exists() and not list(tmp_path.glob(".int8.tmp-*"))


def test_onnx_runtime_int8_averages_the_unets_ranges_over_samples_and_spans_all_of_the_decoders(tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """Activation ranges: the UNet's are each calibration sample's min and max averaged over the samples (NNCF's
    MEAN_MINMAX: sd15 28.3 -> 32.0 dB); the VAE decoder's span every sample (its calibration mixes schedulers whose
    latents differ in scale). Read back from the scale of the QuantizeLinear on a graph input each quantizes."""
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper

    import sdopt.quant.onnxruntime as ort_quant
    from sdopt.cli import main

    recorded = {}

    def spy(*args, **kwargs):
        recorded.update(record_inputs(*args, **kwargs))
        return recorded

    record_inputs = ort_quant.record_inputs
    monkeypatch.setattr(ort_quant, "record_inputs", spy)
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_onnx_artifact), "--scheme", "int8-static", "--components", "unet,vae_decoder", "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "sdopt.json").read_text())

    def scale_of(name, tensor):
        graph = onnx.load(str(out / name / "model.onnx")).graph
        [node] = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
        return float(numpy_helper.to_array(next(i for i in graph.initializer if i.name == node.input[1])))

    def uint8_scale(low, high):  # ORT's asymmetric uint8 scale: the range widened to hold 0
        return (max(high, 0.0) - min(low, 0.0)) / 255

    states = [s["encoder_hidden_states"] for s in recorded["unet"]]
    averaged = uint8_scale(np.mean([s.min() for s in states]), np.mean([s.max() for s in states]))
    extremes = uint8_scale(min(s.min() for s in states), max(s.max() for s in states))
    assert averaged < 0.95 * extremes  # the two rules differ on this data, so the check below tells them apart
    assert scale_of("unet", "encoder_hidden_states") == pytest.approx(averaged, rel=1e-5)
    latents = [s["latent_sample"] for s in recorded["vae_decoder"]]
    assert scale_of("vae_decoder", "latent_sample") == pytest.approx(uint8_scale(min(x.min() for x in latents), max(x.max() for x in latents)), rel=1e-5)
    records = {name: manifest["components"][name]["quantization"] for name in ("unet", "vae_decoder")}
    for name, record in records.items():  # layers: the Conv and MatMul given int8 weights (not their biases)
        graph = onnx.load(str(tiny_onnx_artifact / name / "model.onnx"), load_external_data=False).graph
        weighted = sum(n.op_type in ("Conv", "MatMul") and any(i.name == n.input[1] for i in graph.initializer) for n in graph.node)
        undone = record.get("undone_rewrites", {}).get("upsample_transposed_conv", 0)  # each a convolution now (below)
        assert 0 < record["layers"] == weighted + undone - 2, name  # all but conv_in and conv_out, kept float
    assert records["unet"]["kept_float"] == ["/conv_in/", "/conv_out/", "Gemm (the timestep embedding)"]
    assert records["vae_decoder"]["kept_float"] == ["/conv_in/", "/conv_out/"]  # no timestep embedding in a decoder
    # The decoder's upsample rewrite undone before quantizing: its convolutions run int8, no transposed one is left float.
    decoder = onnx.load(str(out / "vae_decoder" / "model.onnx")).graph
    undone = records["vae_decoder"]["undone_rewrites"]["upsample_transposed_conv"]
    assert undone == manifest["export"]["rewrites"]["vae_decoder"]["upsample_transposed_conv"] > 0
    assert not [n for n in decoder.node if n.op_type == "ConvTranspose"] and sum(n.op_type == "Resize" for n in decoder.node) == undone
    assert any("upsample rewrite(s) turned back" in note for note in manifest["notes"])
    import sdopt
    from sdopt import GenerateRequest

    request = GenerateRequest(prompt="a red circle on the left", steps=4, seed=0)  # the images stay close to the float artifact's
    got, want = (np.asarray(sdopt.load(path).generate(request).images[0], dtype=float) for path in (out, tiny_onnx_artifact))
    assert 10 * np.log10(255**2 / ((got - want) ** 2).mean()) > 25
    methods = {name: record["calibration"]["method"] for name, record in records.items()}
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"int8-static via onnxruntime (calibrated on {records['unet']['calibration']['samples']} samples; {methods['unet']})" in shown
    assert f"upsample_transposed_conv ×{undone} (undone before quantizing)" in shown  # the graph no longer has them
    assert methods == {"unet": "MinMax, each sample's min and max averaged over the samples", "vae_decoder": "MinMax, the min and max over all samples"}


def test_the_upsample_rewrites_kernel_comes_back_exactly_and_only_from_its_own_form():
    """sdopt.quant.undo_upsample inverts sdopt.rewrite.upsample's 4x4 kernel; the graph it writes computes what the
    transposed convolution did (Resize nearest x2 + 3x3 conv, run by ONNX Runtime); any other 4x4 kernel is left alone."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from sdopt.quant.undo_upsample import conv_kernel, undo_upsample_rewrite
    from sdopt.rewrite.upsample import transposed_kernel

    weight = torch.randn(5, 3, 3, 3)
    transposed = transposed_kernel(weight).numpy()
    np.testing.assert_allclose(conv_kernel(transposed), weight.numpy(), atol=1e-5)
    assert conv_kernel(np.random.default_rng(0).standard_normal((3, 5, 4, 4)).astype(np.float32)) is None
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 12, 14])],
                              [numpy_helper.from_array(transposed, "w"), numpy_helper.from_array(np.arange(5, dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 7)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert undo_upsample_rewrite(model) == 1 and [n.op_type for n in model.graph.node] == ["Resize", "Conv"]
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = torch.nn.functional.conv2d(torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="nearest"), weight, torch.arange(5.0), padding=1)
    assert after.shape == before.shape == (1, 5, 12, 14)
    np.testing.assert_allclose(after, before, atol=1e-4)
    np.testing.assert_allclose(after, want.numpy(), atol=1e-4)


@pytest.mark.parametrize("flags, option, reduce", [({"avx2", "fma"}, None, True), ({"avx512f", "avx512_vnni"}, None, False),
                                                   ({"avx2", "amx_int8"}, None, False), ({"avx512_vnni"}, "enable", True), ({"avx2"}, "disable", False)])
def test_onnx_runtimes_int8_reduces_the_weight_range_where_products_would_saturate(monkeypatch, flags, option, reduce):
    """u8 x s8 products without VNNI/AMX saturate at 16 bits (vpmaddubsw): reduce_range (7-bit weights) there, by the
    quantizing CPU's features — forced here, so every branch runs on any machine; first-layer is NNCF's alone."""
    import sdopt.hardware
    from sdopt.errors import SdoptError
    from sdopt.quant.onnxruntime import choose_reduce_range

    monkeypatch.setattr(sdopt.hardware, "cpu_flags", lambda: frozenset(flags))
    assert choose_reduce_range(option)[0] is reduce
    with pytest.raises(SdoptError, match="first-layer is NNCF's"):
        choose_reduce_range("first-layer")


def test_an_optional_rewrite_that_changed_nothing_in_the_unet_is_said():
    """transformer_channels_first computes its transformers' attention itself: the ONNX target's attention_fused then
    changes nothing in the UNet (it still fuses the VAE's), and the manifest says so instead of dropping it silently."""
    from sdopt.rewrite import as_names, unapplied_notes

    done = {"unet": {"transformer_channels_first": 6}, "vae_decoder": {"attention_fused": 1}}
    notes = unapplied_notes(("transformer_channels_first", "attention_fused"), done, {"unet": 0, "vae_decoder": 0, "text_encoder": 0})
    assert notes == ["unet: the attention_fused rewrite changed nothing: transformer_channels_first took what it rewrites"]
    assert unapplied_notes(("attention_fused",), {"unet": {"attention_fused": 12}}, {"unet": 0}) == []
    assert as_names("attention_by_head") == ("attention_by_head",)  # the Python API's one name, not its letters


def test_onnx_runtime_int8_refuses_before_any_work_where_memory_is_short(tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """Calibration holds the graph, a copy and their sessions (sd15: 17.6 GB for a 3.28 GB UNet): refused up front."""
    import sdopt.hardware
    from sdopt.cli import main

    monkeypatch.setattr(sdopt.hardware, "available_bytes", lambda: 2**20)
    assert main(["quantize", str(tiny_onnx_artifact), "--scheme", "int8-static", "-o", str(tmp_path / "q")]) == 2
    assert "ONNX Runtime's int8 quantizer would need about" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()



def test_onnx_runtime_int8_refuses_unknown_calibration_schedulers_before_calibrating(tiny_onnx_artifact, tmp_path, monkeypatch, capsys):
    """--calibration-schedulers was checked by name on NNCF's path only: ONNX Runtime's ran the UNet's calibration
    generations first and failed at the decoder's first run ("unknown scheduler 'eulr'"), or took an empty list as the
    default. Refused up front now, as NNCF refuses them."""
    import sdopt.quant.onnxruntime

    def calibrating(*args, **kwargs):
        raise AssertionError("calibration ran before the options were checked")

    monkeypatch.setattr(sdopt.quant.onnxruntime, "record_inputs", calibrating)
    for value, said in (("euler,eulr", "(eulr is not one)"), (",", "give scheduler names from")):
        assert main(["quantize", str(tiny_onnx_artifact), "--scheme", "int8-static", "--components", "unet,vae_decoder",
                     "--calibration-schedulers", value, "-o", str(tmp_path / "q")]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "q").exists()


def test_onnx_runtime_int8_refuses_an_artifact_saved_with_offline_optimizations(tiny_onnx_artifact, tmp_path, capsys):
    """`export --optimize` fuses SiLU into com.microsoft's QuickGelu, which ORT's calibration leaves without a range: the
    quantizer failed after calibrating ("Unable to get valid quantization scale"). Refused up front, saying what to do."""
    optimized = tmp_path / "optimized"
    shutil.copytree(tiny_onnx_artifact, optimized)
    record = json.loads((optimized / "sdopt.json").read_text())
    record["export"]["optimizations"] = {"unet": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"}}
    (optimized / "sdopt.json").write_text(json.dumps(record))
    assert main(["quantize", str(optimized), "--scheme", "int8-static", "-o", str(tmp_path / "q")]) == 2
    assert "unet: saved with ONNX Runtime's offline optimizations (sdopt export --optimize)" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_a_path_onnx_runtime_cannot_open_is_refused_with_the_cause(tiny_model, tmp_path):
    """ONNX Runtime opens a path's UTF-8 bytes: a name in another encoding (ISO-8859-1's é, written under such a
    locale) is refused with the fix, before the export's tracing, not with ORT's "File doesn't exist" for a file that is
    there."""
    from sdopt.runtime.onnxruntime import OrtComponent

    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    with pytest.raises(SdoptError, match="UTF-8 locale"):
        OrtComponent(folder / "model.onnx", ["CPUExecutionProvider"], device="cpu")
    started = time.perf_counter()
    with pytest.raises(SdoptError, match="UTF-8 locale"):
        export(tiny_model, "onnx", folder / "out", progress=False)
    assert time.perf_counter() - started < 5  # before any component is traced


THREADS_SIDE_BY_SIDE = """
import sys, threading
import sdopt

def side_by_side(work, count=2):
    start, errors = threading.Barrier(count), []
    def run(i):
        start.wait()
        try:
            work(i)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return errors

onnx = [sdopt.load(sys.argv[1]) for _ in range(2)]
request = sdopt.GenerateRequest(prompt="a red circle", steps=2, height=64, width=64, seed=0)
print("first generates:", side_by_side(lambda i: onnx[i].generate(request)))  # each looks up Diffusers' scheduler class
print("torch loads:", side_by_side(lambda i: sdopt.load(sys.argv[2])))
"""


def test_pipelines_load_and_first_generate_side_by_side_in_threads(tiny_onnx_artifact, tiny_model):
    # README: "load one pipeline per thread to run them side by side". In a fresh process (what fails is the first
    # lookup), two ONNX pipelines' first generates at once got "the checkpoint's scheduler class PNDMScheduler is not
    # in this diffusers version" (Diffusers' lazy module, looked up from two threads), and two torch loads at once
    # "cannot load text_encoder ... Unsupported device type 'meta' ... the checkpoint is damaged".
    done = subprocess.run([sys.executable, "-c", THREADS_SIDE_BY_SIDE, str(tiny_onnx_artifact), str(tiny_model)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "first generates: []" in done.stdout and "torch loads: []" in done.stdout, done.stdout


@pytest.mark.parametrize("moment", ["read_manifest", "carried_folders"])
def test_a_source_replaced_while_it_is_exported_writes_no_artifact(tiny_model, tmp_path, monkeypatch, moment):
    """init-model --force into the checkpoint being exported renames a whole new model in. Right after its manifest was
    read, the export called the new model's whole files "changed or corrupted after export"; after its weights were
    exported, it copied the new model's tokenizer and scheduler beside the old one's graphs and said it was done. Now
    either way it says the source was replaced, and leaves nothing."""
    from sdopt.export import run
    from sdopt.zoo import write_model

    source = tmp_path / "model"
    shutil.copytree(tiny_model, source)
    newer = write_model("tiny", tmp_path / "newer", seed=1, progress=False)
    real = getattr(run, moment)

    def then_replaced(*args):  # another command's --force into the source lands now
        result = real(*args)
        if not (tmp_path / "older").exists():
            source.rename(tmp_path / "older")
            newer.rename(source)
        return result

    monkeypatch.setattr(run, moment, then_replaced)
    with pytest.raises(SdoptError, match="model was replaced by another command while this export read it"):
        export(source, "onnx", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "older"]
