"""Backend run settings (a profile's [run] tables -> the run_settings load option): applied, read back, refused when wrong."""

import pytest

import sdopt
from sdopt import GenerateRequest, SdoptError
from sdopt.bench.profiles import load_profile

from conftest import SMALL


def _profile(tmp_path, body: str):
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\ndevice = "cpu"\n' + body)
    return path


def test_profile_run_tables(tmp_path):
    profile = load_profile(str(_profile(tmp_path, '[run.openvino]\nPERFORMANCE_HINT = "LATENCY"\n[run.onnxruntime]\ninter_op_num_threads = 1\n')))
    assert profile.run == {"openvino": {"PERFORMANCE_HINT": "LATENCY"}, "onnxruntime": {"inter_op_num_threads": 1}}
    with pytest.raises(SdoptError, match=r"\[run.torch\]: run settings apply to onnxruntime, openvino"):
        load_profile(str(_profile(tmp_path, "[run.torch]\nthreads = 2\n")))
    with pytest.raises(SdoptError, match="one table per backend"):
        load_profile(str(_profile(tmp_path, "[run]\nthreads = 2\n")))


@pytest.mark.parametrize("body, message", [
    ('PERFORMANCE_HINT = "LATENC"', r"\[run.openvino\]: OpenVINO's CPU plugin does not take PERFORMANCE_HINT = 'LATENC': Wrong value"),
    ("NUM_STREAMZ = 1", r"has no property NUM_STREAMZ \(did you mean NUM_STREAMS\?\)"),
    ('NUM_STREAMS = "many"', "does not take NUM_STREAMS = 'many'"),
    # OpenVINO takes these without a word: 1.5 runs 1 stream, "" its default
    ("NUM_STREAMS = 1.5", r"takes a whole number for NUM_STREAMS, not 1.5 \(it would run 1 without saying so\)"),
    ('NUM_STREAMS = ""', r"not '' \(it would run its default"),
    ('INFERENCE_NUM_THREADS = "2.0"', "takes a whole number for INFERENCE_NUM_THREADS, not '2.0'"),
    ('performance_hint = "LATENCY"', "give OpenVINO property names"),
    ('ENABLE_MMAP = "maybe"', "OpenVINO does not take ENABLE_MMAP = 'maybe'"),
])
def test_profile_openvino_run_settings_are_checked_when_read(tmp_path, body, message):
    """A name OpenVINO's plugin lacks or a value it refuses fails when the profile is read, naming the table: the
    bench failed on it only on reaching an OpenVINO entry, after building and benching the others."""
    pytest.importorskip("openvino")
    with pytest.raises(SdoptError, match=message):
        load_profile(str(_profile(tmp_path, f"[run.openvino]\n{body}\n")))
    ok = load_profile(str(_profile(tmp_path, '[run.openvino]\nPERFORMANCE_HINT = "THROUGHPUT"\nNUM_STREAMS = 2\nENABLE_CPU_PINNING = true\n'
                                             'INFERENCE_NUM_THREADS = "2"\n'
                                             f'CACHE_DIR = "{tmp_path}"\nENABLE_MMAP = false\n')))  # the core's: no plugin lists them
    assert ok.run["openvino"]["NUM_STREAMS"] == 2


@pytest.mark.parametrize("table, message", [
    ("{ train_step = 30 }", "distill has no key 'train_step'"),
    ('{ train_steps = "many" }', r"distill.train_steps = 'many': give a number"),
    ("{ train_steps = 30.5 }", r"give a number \(a whole one\)"),
    ("{ latents = nan }", r"distill.latents = nan: give a number \(a whole one\)"),  # int(nan) was a ValueError traceback
    ("{ latents = 1 }", "--latents must be at least 2"),
    ("{ height = 60 }", "must be a multiple of 8"),
    ('{ prompts = "a cat" }', "a list of prompts"),
    ("7", "distill is a table"),
    ("{ threads = -2 }", "threads -2: must be 0 or more"),  # a traceback from torch.set_num_threads after the others built
    ("{ guidance_scale = nan }", "guidance_scale nan: a finite number"),
    ("{ lr = -1.0 }", "lr -1.0: a learning rate is a positive number"),
    ("{ warmup_steps = -5 }", "warmup_steps -5: must be 0 or more"),
])
def test_profile_distill_tables_are_checked_when_read(tmp_path, table, message):
    entry = f'[[artifacts]]\nname = "tiny-dec"\nexport = "onnx"\nvae_decoder = "distilled"\ndistill = {table}\n'
    with pytest.raises(SdoptError, match=rf"p.toml: \[\[artifacts\]\] 'tiny-dec': .*{message}"):
        load_profile(str(_profile(tmp_path, entry)))
    good = entry.replace(f"distill = {table}", 'distill = { train_steps = 30, lr = 0.002, prompts = ["a red circle"] }')
    assert load_profile(str(_profile(tmp_path, good))).artifacts[0]["distill"]["train_steps"] == 30


@pytest.mark.parametrize("body, message", [
    ('graph_optimization_level = "max"', "graph_optimization_level = 'max': give one of disable, basic, extended, all"),
    ("intra_op_num_threads = -1", "intra_op_num_threads = -1: give a whole number of threads"),
    ('inter_op_num_threads = "two"', "inter_op_num_threads = 'two'"),
    ('allow_spinning = "maybe"', "allow_spinning = 'maybe': give true or false"),
])
def test_profile_onnxruntime_run_settings_values_are_checked_when_read(tmp_path, body, message):
    """Values, not only names: a bad one failed when the bench reached an ONNX entry, after exporting and benching it."""
    pytest.importorskip("onnxruntime")
    with pytest.raises(SdoptError, match=rf"\[run.onnxruntime\]: ONNX Runtime {message}"):
        load_profile(str(_profile(tmp_path, f"[run.onnxruntime]\n{body}\n")))


def test_shipped_cpu_profiles_set_run_settings():
    for name in ("cpu-generic", "cpu-avx512", "cpu-shapes"):
        run = load_profile(name).run
        assert run["openvino"]["PERFORMANCE_HINT"] == "LATENCY", name
        assert run["onnxruntime"]["graph_optimization_level"] in ("extended", "all"), name


def test_openvino_applies_and_reports_run_settings(tiny_ov):
    pytest.importorskip("openvino")
    with sdopt.load(tiny_ov, run_settings={"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2}) as pipe:
        unet = pipe.run_settings()["unet"]
        assert unet["PERFORMANCE_HINT"] == "THROUGHPUT" and unet["NUM_STREAMS"] == "2"
        assert unet["INFERENCE_PRECISION_HINT"] == "f32"  # the artifact's precision, untouched
        assert pipe.generate(GenerateRequest(**SMALL)).images[0].size == (SMALL["width"], SMALL["height"])
    with sdopt.load(tiny_ov) as pipe:  # without: the latency hint, one stream
        assert pipe.run_settings()["unet"]["PERFORMANCE_HINT"] == "LATENCY" and pipe.run_settings()["unet"]["NUM_STREAMS"] == "1"


@pytest.mark.parametrize("settings, message", [
    ({"INFERENCE_PRECISION_HINT": "f16"}, "the artifact's precision decides it"),
    ({"performance_hint": "LATENCY"}, "give OpenVINO property names"),
    ({"NUM_STREAMS": "many"}, "OpenVINO could not compile"),
])
def test_openvino_refuses_bad_run_settings(tiny_ov, settings, message):
    pytest.importorskip("openvino")
    with pytest.raises(SdoptError, match=message):
        sdopt.load(tiny_ov, run_settings=settings)


def test_onnxruntime_applies_and_reports_run_settings(tiny_onnx_artifact):
    pytest.importorskip("onnxruntime")
    settings = {"graph_optimization_level": "extended", "intra_op_num_threads": 1, "execution_mode": "sequential", "allow_spinning": False}
    with sdopt.load(tiny_onnx_artifact, run_settings=settings) as pipe:
        unet = pipe.run_settings()["unet"]
        assert unet["graph_optimization_level"] == "ORT_ENABLE_EXTENDED" and unet["intra_op_num_threads"] == 1
        assert unet["allow_spinning"] is False and unet["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(SdoptError, match="intra_op_threads are not known; give any of intra_op_num_threads"):
        sdopt.load(tiny_onnx_artifact, run_settings={"intra_op_threads": 2})
    with pytest.raises(SdoptError, match="graph_optimization_level = 'max': give one of disable, basic, extended, all"):
        sdopt.load(tiny_onnx_artifact, run_settings={"graph_optimization_level": "max"})


def test_torch_refuses_run_settings(tiny_model):
    with pytest.raises(SdoptError, match="the torch backend does not take run_settings; onnxruntime and openvino do"):
        sdopt.load(tiny_model, run_settings={"x": 1})


def test_torch_takes_threads_and_reports_them(tiny_model):
    """The torch backend took no threads option (ONNX Runtime and OpenVINO did), so on a shared machine a torch
    artifact could not be held to the cores left free, from Python or from sdopt generate/serve --threads."""
    import torch

    before = torch.get_num_threads()
    try:
        with sdopt.load(tiny_model, threads=1) as pipe:
            assert torch.get_num_threads() == 1
            unet = pipe.run_settings()["unet"]
            assert unet["intra_op_threads"] == 1 and "omp_wait_policy" in unet
    finally:
        torch.set_num_threads(before)

