"""Shared fixtures: the synthetic checkpoints, their exports and a bench, built once per test run (for every xdist process)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

# Under pytest-xdist each worker process takes its share of the cores for torch's (OpenMP's) threads, and so do the
# processes its tests start, which inherit this. With every process on every core, OpenMP's threads spin-waited
# for each other across processes: `make test` on 2 cores took 8:20 and 825 CPU-seconds, against 6:40 and 641
# with one thread each (side by side, 2026-12-05). A value set by the user is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Nothing in the suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sdopt  # noqa: E402,F401  before any test module imports a backend: its guards (sdopt/_offline.py) then cover them


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once per test run. Under pytest-xdist every worker process has a
    session of its own, and each built the same checkpoints, exports and bench (the bench alone 25-35 s on CI's
    2 cores): here the first worker to ask builds it under a lock, the others wait for it and read it. What is
    built this way is read by the tests, never changed."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    import fcntl  # POSIX: pytest-xdist's processes on Linux and macOS

    shared = tmp_path_factory.getbasetemp().parent / "shared"  # the workers' base folders share this parent
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when build raises
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in the other worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _zoo_model(tmp_path_factory, name: str, **options):
    from sdopt.zoo import write_model

    return built_once(tmp_path_factory, f"zoo-{name}", lambda folder: write_model(name, folder / name, progress=False, **options)) / name


@pytest.fixture
def bars_drawn_every(monkeypatch):
    """Call with seconds: every tqdm bar made after it draws at most that often (0: every update), as on a terminal (0.1 s)
    or off one (sdopt.cli's 30 s). TQDM_MININTERVAL cannot say it in a test: tqdm reads its environment once, when
    first imported, which in a whole run is some earlier test's import with whatever the variable was then."""
    def draw_every(seconds: float) -> None:
        import tqdm

        made = tqdm.tqdm.__init__

        def init(self, *args, **kwargs):
            made(self, *args, **{**kwargs, "mininterval": seconds})

        monkeypatch.setattr(tqdm.tqdm, "__init__", init)

    return draw_every


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return _zoo_model(tmp_path_factory, "tiny", seed=0)


@pytest.fixture(scope="session")
def sdxl_tiny(tmp_path_factory):
    """The SDXL-shaped toy: two text encoders, pooled embedding and time ids."""
    return _zoo_model(tmp_path_factory, "sdxl-tiny", seed=0)


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory):
    """The shipped shapes model (trained weights; v-prediction, zero terminal SNR), installed once."""
    return _zoo_model(tmp_path_factory, "shapes")


# A tiny-decoder distillation cut to seconds: what it writes and how it behaves, not how good it gets.
DISTILL_FEW = dict(latents=4, steps_per_image=2, generate_batch=2, train_steps=4, batch=2, crop=4, height=64, width=64)


@pytest.fixture(scope="session")
def distilled(tiny_model, tmp_path_factory):
    """A tiny decoder distilled from the tiny model (sdopt distill-decoder, DISTILL_FEW)."""
    from sdopt.decoder.distill import DistillSettings, distill_decoder

    def distill(folder):
        distill_decoder(tiny_model, folder / "tiny-decoder", DistillSettings(**DISTILL_FEW), progress=False)

    return built_once(tmp_path_factory, "decoder", distill) / "tiny-decoder"


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    import sdopt

    return sdopt.load(tiny_model)


# Tests that need one of these fixtures take seconds to tens of seconds to set up (a real bench, every
# quantized row, OpenVINO exports): they are marked slow, so `pytest -m "not slow"` is the quick subset.
SLOW_FIXTURES = {"bench_report", "quantized", "tiny_ov", "tiny_ov_bf16_static"}


# The order `make test` hands whole test files to its two processes (--dist loadfile --no-loadscope-reorder takes
# collection order): the longest first, the short ones filling in, so both processes finish together. In xdist's own
# order (most tests first) one process waited 40 s for the other. test_ray goes in when about its own length in short
# files is left: its Ray jobs run beside each other, each on every core, and beside the longest files its cluster test
# took 97 s and the file 200 s, beside short ones 50 s and 100 s. Run last, the other process sat idle for its whole
# length (from the figures below: 607 s for the longer process against 580 with test_ray before the last 77 s).
# FILE_SECONDS: each file's tests summed, one whole `make test` on 2 cores (AMD EPYC Zen 4, 2026-12-08); a file not
# listed counts as a short one. Refresh with scripts/test_file_seconds.py when a file's time moves by tens of seconds.
FILE_SECONDS = {"test_serve": 136, "test_families": 78, "test_onnx": 72, "test_bench": 64, "test_guarantees": 56, "test_cpu_paths": 55,
                "test_ray": 54, "test_openvino": 49, "test_quant": 49, "test_img2img": 44, "test_lora": 42, "test_forkserver": 42,
                "test_stepcache": 35, "test_import_lean": 32, "test_serve_a1111": 31, "test_optimize": 31, "test_tensorrt": 26,
                "test_cli_errors": 25, "test_embeddings": 25, "test_request_defaults": 25, "test_parity_diffusers": 22, "test_lcm": 22,
                "test_tiny_decoder": 20, "test_compile": 14, "test_platforms": 12, "test_rewrite": 10, "test_infotext": 9, "test_bars": 9,
                "test_clip_skip": 7, "test_backends_agree": 7, "test_generate": 7, "test_guidance": 7, "test_shapes": 5}
SHORT_FILE_SECONDS = 2
BESIDE_SHORT_FILES = "test_ray"


def file_order(stems: list[str]) -> list[str]:
    """The files longest first, BESIDE_SHORT_FILES where the files after it add up to at most 1.5 times its own length."""
    seconds = {stem: FILE_SECONDS.get(stem, SHORT_FILE_SECONDS) for stem in stems}
    order = sorted(stems, key=lambda stem: -seconds[stem])  # stable: files of equal length keep their collection order
    if BESIDE_SHORT_FILES in order:
        order.remove(BESIDE_SHORT_FILES)
        at, after = len(order), 0.0
        while at and after + seconds[order[at - 1]] <= 1.5 * seconds[BESIDE_SHORT_FILES]:
            at -= 1
            after += seconds[order[at]]
        order.insert(at, BESIDE_SHORT_FILES)
    return order


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {stem: i for i, stem in enumerate(file_order(list(dict.fromkeys(item.path.stem for item in items))))}
    items.sort(key=lambda item: rank[item.path.stem])  # stable: each file's own order is kept


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

    return built_once(tmp_path_factory, target, lambda folder: export(tiny_model, target, folder / f"tiny-{target}")) / f"tiny-{target}"


@pytest.fixture(scope="session")
def tiny_onnx_artifact(tiny_model, tmp_path_factory):
    return _session_export(tiny_model, tmp_path_factory, "onnx", "onnxruntime")


@pytest.fixture(scope="session")
def tiny_onnx_plain(tiny_model, tmp_path_factory):
    """The tiny model exported to ONNX --no-rewrites: the graphs as the checkpoint defines them (attention as MatMul,
    Softmax, MatMul)."""
    pytest.importorskip("onnxruntime")
    from sdopt.export.run import export

    return built_once(tmp_path_factory, "onnx-plain", lambda folder: export(tiny_model, "onnx", folder / "plain", no_rewrites=True)) / "plain"


# "Of peak" is checked for its logic here, not its figure: a short matmul probe (1 s per precision otherwise).
os.environ.setdefault("SDOPT_PEAK_PROBE_SECONDS", "0.2")


@pytest.fixture(scope="module", autouse=True)
def long_lived_objects_out_of_the_collectors_way():
    """What is alive as a test file starts (torch, Diffusers, the session's models) is frozen out of the cycle collector
    for the file, and let back in after it. A test process holds ~0.6 M objects or more, and every full collection walked
    them all: the exports' own gc.collect() per component (export/onnx.py, openvino.py) and Python's automatic ones, 47 in
    test_onnx.py alone, 13.3 s of its 64 s (2.8 s with this; gc.callbacks timing, 2-core AMD EPYC). Objects made during
    the file are collected as before; the cyclic garbage among the frozen ones waits for the next file's collect."""
    import gc

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


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
    """(the report's folder, its report.json as every worker reads it)."""
    from sdopt.bench.runner import run_bench
    from sdopt.bench.settings import BenchSettings

    def bench(folder):
        settings = BenchSettings.resolve(None, **BENCH_SETTINGS)
        settings.run = {"onnxruntime": BENCH_ORT_RUN}  # as a profile's [run.onnxruntime] would: recorded per row
        # torch.compile with Dynamo's eager backend: the compiled row's bookkeeping without inductor's ~40 s (test_compile).
        artifacts = [f"{tiny_model}@bf16", str(tiny_onnx_artifact), f"{tiny_model}+compile=eager"]
        run_bench(artifacts, str(tiny_model), folder / "report", settings, progress=False)

    out = built_once(tmp_path_factory, "bench", bench) / "report"
    return out, json.loads((out / "report.json").read_text())


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
