"""Shared fixtures: one tiny synthetic checkpoint per test session."""

from __future__ import annotations

import copy
import os

import pytest

# Nothing in the suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sdopt  # noqa: E402,F401  before any test module imports a backend: its guards (sdopt/_offline.py) then cover them


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from sdopt.zoo import write_model

    return write_model("tiny", tmp_path_factory.mktemp("zoo") / "tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def sdxl_tiny(tmp_path_factory):
    """The SDXL-shaped toy: two text encoders, pooled embedding and time ids."""
    from sdopt.zoo import write_model

    return write_model("sdxl-tiny", tmp_path_factory.mktemp("zoo") / "sdxl-tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory):
    """The shipped shapes model (trained weights; v-prediction, zero terminal SNR), installed once."""
    from sdopt.zoo import write_model

    return write_model("shapes", tmp_path_factory.mktemp("zoo") / "shapes", progress=False)


# A tiny-decoder distillation cut to seconds: what it writes and how it behaves, not how good it gets.
DISTILL_FEW = dict(latents=4, steps_per_image=2, generate_batch=2, train_steps=4, batch=2, crop=4, height=64, width=64)


@pytest.fixture(scope="session")
def distilled(tiny_model, tmp_path_factory):
    """A tiny decoder distilled from the tiny model (sdopt distill-decoder, DISTILL_FEW)."""
    from sdopt.decoder.distill import DistillSettings, distill_decoder

    return distill_decoder(tiny_model, tmp_path_factory.mktemp("decoder") / "tiny-decoder", DistillSettings(**DISTILL_FEW), progress=False)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    import sdopt

    return sdopt.load(tiny_model)


# Tests that need one of these fixtures take seconds to tens of seconds to set up (a real bench, every
# quantized row, OpenVINO exports): they are marked slow, so `pytest -m "not slow"` is the quick subset.
SLOW_FIXTURES = {"bench_report", "quantized", "tiny_ov", "tiny_ov_bf16_static"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# A request small enough for a 2-core machine, large enough to exercise the whole loop.
SMALL = dict(prompt="a red fox in the snow", seed=7, steps=4, height=64, width=64, guidance_scale=7.5)


# --- one real bench of the tiny model, shared by test_bench.py and test_gate.py --------------
# (defined here, not imported between test modules: an imported fixture is a second definition,
# and pytest would run the whole bench once per module)
BENCH_SETTINGS = dict(prompts=["a lighthouse at dawn"], seeds=[0, 1], steps=2, height=64, width=64, warmup=1, runs=2, scheduler="euler")


def _session_export(tiny_model, tmp_path_factory, target: str, library: str):
    """One export of the tiny model for the whole session (fp32, dynamic shapes): read, never changed."""
    pytest.importorskip(library)
    from sdopt.export.run import export

    out = tmp_path_factory.mktemp(target) / f"tiny-{target}"
    export(tiny_model, target, out)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_artifact(tiny_model, tmp_path_factory):
    return _session_export(tiny_model, tmp_path_factory, "onnx", "onnxruntime")


# "Of peak" is checked for its logic here, not its figure: a short matmul probe (1 s per precision otherwise).
os.environ.setdefault("SDOPT_PEAK_PROBE_SECONDS", "0.2")


@pytest.fixture(scope="session", autouse=True)
def own_compiled_model_cache(tmp_path_factory):
    """OpenVINO's compiled models go to a cache folder of the session's own, never the user's."""
    old = os.environ.get("SDOPT_CACHE_DIR")
    os.environ["SDOPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("sdopt-cache"))
    yield
    if old is None:
        os.environ.pop("SDOPT_CACHE_DIR", None)
    else:
        os.environ["SDOPT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_ov(tiny_model, tmp_path_factory):
    return _session_export(tiny_model, tmp_path_factory, "openvino", "openvino")


BENCH_ORT_RUN = {"graph_optimization_level": "basic", "inter_op_num_threads": 1}


@pytest.fixture(scope="session")
def bench_report(tiny_model, tiny_onnx_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    from sdopt.bench.runner import run_bench
    from sdopt.bench.settings import BenchSettings

    settings = BenchSettings.resolve(None, **BENCH_SETTINGS)
    settings.run = {"onnxruntime": BENCH_ORT_RUN}  # as a profile's [run.onnxruntime] would: recorded per row
    # torch.compile with Dynamo's eager backend: the compiled row's bookkeeping without inductor's ~40 s (test_compile).
    report = run_bench([f"{tiny_model}@bf16", str(tiny_onnx_artifact), f"{tiny_model}+compile=eager"], str(tiny_model), out, settings, progress=False)
    return out, report


def derived(report, **changes):
    """A copy of a real report with some artifact fields changed (for the gate tests)."""
    new = copy.deepcopy(report)
    for name, fields in changes.items():
        artifact = next(a for a in new["artifacts"] if a["name"] == name)
        for path, value in fields.items():
            target = artifact
            *parents, last = path.split(".")
            for p in parents:
                target = target[p]
            target[last] = value(target[last]) if callable(value) else value
    return new
