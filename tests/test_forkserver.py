"""Bench workers forked from a server that imported their backend once (bench/forkserver.py): a
forked worker must measure what a cold one would, but its load time (imports excluded)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sdopt.bench.forkserver import PRELOADS, effective_worker_start, uses_fork_server
from sdopt.bench.runner import run_bench
from sdopt.bench.settings import BenchSettings

from conftest import BENCH_ORT_RUN, BENCH_SETTINGS  # noqa: E402

pytest.importorskip("pandas")

LINUX = sys.platform.startswith("linux")

_IMPORTED_BY_A_WORKER = textwrap.dedent("""
    import json, sys
    import sdopt
    pipe = sdopt.load(sys.argv[1], device="cpu")
    pipe.generate(sdopt.GenerateRequest(prompt="a", steps=1))  # a worker generates: the scheduler is built here
    print(json.dumps({"not_imported": [m for m in sys.argv[2:] if m not in sys.modules],
                      "libraries": [m for m in ("torch", "diffusers", "transformers", "onnxruntime", "openvino") if m in sys.modules]}))
""")


def test_the_server_imports_what_a_cold_worker_of_its_backend_would_and_nothing_more(tiny_model, tiny_ov, tiny_onnx_artifact):
    # A module the server imported and the artifact's worker would not is memory only the forked
    # worker holds: every preloaded module must be one a fresh process loading the plainest artifact
    # of that backend and generating with it imports anyway (a quantized one imports more, never less).
    # And the heavy libraries it imports are preloaded: ONNX and OpenVINO workers imported Diffusers and
    # torch (for the scheduler) again in each first generate, seconds each.
    artifacts = {"torch": tiny_model, "openvino": tiny_ov, "onnxruntime": tiny_onnx_artifact}
    assert set(artifacts) == set(PRELOADS)
    procs = {backend: subprocess.Popen([sys.executable, "-c", _IMPORTED_BY_A_WORKER, str(path), *PRELOADS[backend]],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for backend, path in artifacts.items()}
    for backend, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        imported = json.loads(out.splitlines()[-1])
        assert imported["not_imported"] == [], f"{backend}: preloaded but not imported by its worker"
        preloaded = {name.split(".")[0] for name in PRELOADS[backend]}
        assert [m for m in imported["libraries"] if m not in preloaded] == [], f"{backend}: imported by every worker, not preloaded"


def test_which_workers_are_forked():
    assert uses_fork_server("fork", "cpu", "torch") == LINUX
    assert not uses_fork_server("cold", "cpu", "torch")
    assert uses_fork_server("fork", "cuda:0", "torch") == LINUX  # a server that keeps CUDA uninitialised (below)
    assert effective_worker_start("fork", "cuda") == ("fork" if LINUX else "cold")
    assert effective_worker_start("fork", "mps") == "cold"
    assert not uses_fork_server("fork", "cpu", "tensorrt")  # no server for it: started cold


def test_an_unknown_worker_start_is_refused():
    from sdopt import SdoptError

    with pytest.raises(SdoptError, match="--worker-start"):
        BenchSettings.resolve(None, **BENCH_SETTINGS, worker_start="spawn")


@pytest.mark.skipif(not LINUX, reason="the fork server is Linux-only")
def test_a_forked_worker_measures_what_a_cold_one_does_but_the_imports(bench_report, tiny_model, tiny_onnx_artifact, tmp_path):
    # The shared bench (conftest.bench_report) forked its workers; the same artifacts again, cold.
    forked_out, forked = bench_report
    settings = BenchSettings.resolve(None, **BENCH_SETTINGS, worker_start="cold")
    settings.run = {"onnxruntime": BENCH_ORT_RUN}
    cold = run_bench([str(tiny_onnx_artifact)], str(tiny_model), tmp_path / "cold", settings, progress=False)
    assert forked["settings"]["worker_start"] == "fork" and cold["settings"]["worker_start"] == "cold"
    assert "- workers: a process per artifact and round, forked" in (forked_out / "report.md").read_text()
    assert "- workers: a fresh interpreter per artifact" in (tmp_path / "cold" / "report.md").read_text()
    rows = {name: ({a["name"]: a for a in forked["artifacts"]}[name], {a["name"]: a for a in cold["artifacts"]}[name])
            for name in (cold["reference"], cold["artifacts"][1]["name"])}
    for name, (f, c) in rows.items():
        assert f["status"] == c["status"] == "ok"
        # Peak RSS: the libraries' file-backed pages, which the kernel does not map into a forked
        # child, are mapped again (without that, the torch worker read ~100 MB, 17% here, lower).
        assert f["process_peak_rss_bytes"] == pytest.approx(c["process_peak_rss_bytes"], rel=0.05), name
        assert f["peak_memory_bytes"] == pytest.approx(c["peak_memory_bytes"], rel=0.05), name
    torch_forked, torch_cold = rows[cold["reference"]]
    # Load time is the artifact's own: importing torch and Diffusers (~6 s) is not in it.
    assert torch_forked["load_s"] < torch_cold["load_s"] / 3


@pytest.mark.skipif(not LINUX, reason="the fork server is Linux-only")
def test_a_worker_past_its_timeout_is_killed_and_the_server_runs_the_next(tiny_model, tiny_ov, tmp_path):
    from sdopt.bench.artifacts import collect
    from sdopt.bench.forkserver import ForkServer
    from sdopt.bench.runner import worker_job

    entry = collect([str(tiny_ov)], str(tiny_model))[1]
    server = ForkServer("openvino")
    try:
        endless, short = tmp_path / "endless", tmp_path / "short"
        for folder, runs in ((endless, 100000), (short, 1)):
            folder.mkdir()
            settings = BenchSettings.resolve(None, **{**BENCH_SETTINGS, "runs": runs, "warmup": 0, "seeds": [0]})
            (folder / "job.json").write_text(json.dumps(worker_job(entry, settings, str(folder))))
        # 1 s, not 3: the endless job is killed at whatever stage the timeout finds it (its load or its runs)
        assert server.run(endless / "job.json", endless / "result.json", endless / "worker.log", timeout=1) is None
        assert not (endless / "result.json").exists()
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(server.last_worker, 0)
        assert server.run(short / "job.json", short / "result.json", short / "worker.log", timeout=120) == 0
        assert json.loads((short / "result.json").read_text())["status"] == "ok"
    finally:
        server.close()
    assert server._proc.poll() is not None


@pytest.mark.skipif(not LINUX, reason="the fork server is Linux-only")
def test_a_closed_fork_server_leaves_no_pipe_open(monkeypatch):
    """`PYTHONWARNINGS=error sdopt bench` (or python -X dev) ended with "Exception ignored ... ResourceWarning: unclosed
    file" tracebacks from close_servers at exit: close() ended the server but left its stdin and stdout pipes open."""
    import gc
    import warnings

    from sdopt.bench import forkserver

    monkeypatch.setitem(forkserver.PRELOADS, "onnxruntime", ("json",))  # a server that starts at once
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        server = forkserver.ForkServer("onnxruntime")
        server.close()
        del server
        gc.collect()
    assert not [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]


@pytest.mark.skipif(not LINUX, reason="the fork server is Linux-only")
def test_a_killed_bench_leaves_no_fork_server_log_in_the_temporary_folder(tmp_path):
    """Each `sdopt bench` killed (SIGKILL: CI's timeout, the OOM killer) left an empty
    $TMPDIR/sdopt-forkserver-BACKEND-*.log per backend, one more every time, that nothing removed."""
    code = textwrap.dedent("""
        import os, signal
        from sdopt.bench import forkserver
        forkserver.PRELOADS["onnxruntime"] = ("json",)  # a server that starts at once
        server = forkserver.ForkServer("onnxruntime")
        assert server.alive()
        os.kill(os.getpid(), signal.SIGKILL)  # killed while its server runs: no close, no atexit
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("sdopt")]


def test_one_server_per_backend_and_environment_and_a_clear_error_when_it_cannot_start(monkeypatch):
    from sdopt.bench import forkserver

    # Which server is given, kept and replaced, not what it imports (test_the_server_imports_...): servers that start at
    # once, where each real one imported ONNX Runtime, Transformers, torch and Diffusers' schedulers (seconds each).
    monkeypatch.setitem(forkserver.PRELOADS, "onnxruntime", ("json",))
    server = forkserver.server_for("onnxruntime")
    assert forkserver.server_for("onnxruntime") is server  # every bench of this process forks from it
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_x.py::test_y (call)")  # pytest's, new in each test: no worker reads it
    assert forkserver.server_for("onnxruntime") is server
    monkeypatch.setenv("SDOPT_TEST_FORKSERVER", "1")  # a cold worker would see it: so must a forked one
    other = forkserver.server_for("onnxruntime")
    assert other is not server and other.alive()
    assert not server.alive()  # replaced: one server per backend holds its imports' memory at a time
    other.close()
    assert not other.alive()
    monkeypatch.setitem(forkserver.PRELOADS, "onnxruntime", ("sdopt_no_such_module",))
    with pytest.raises(RuntimeError, match="fork server did not start.*sdopt_no_such_module"):
        forkserver.server_for("onnxruntime")


@pytest.mark.skipif(not LINUX, reason="the fork server is Linux-only")
def test_a_cuda_server_serves_only_where_a_forked_child_could_use_cuda(tmp_path, monkeypatch):
    # No GPU here: with torch imported (by this sitecustomize, in the servers of the lighter ONNX
    # Runtime backend; a torch server imports it itself) there is nothing CUDA set up, so a server
    # for CUDA workers is ready. Where an import had set CUDA up, torch would mark the forked child a
    # "bad fork": simulated by the sitecustomize saying so, and the server must refuse and say why.
    from sdopt.bench import forkserver

    (tmp_path / "sitecustomize.py").write_text(
        "import os\nimport torch.cuda\nif os.environ.get('SDOPT_TEST_BAD_FORK'):\n    torch.cuda._is_in_bad_fork = lambda: True\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    # torch is what a server checks CUDA with, and this sitecustomize imports it in each: the backend's own imports
    # (ONNX Runtime, Transformers, Diffusers' schedulers) only added seconds to each of the three servers.
    monkeypatch.setitem(forkserver.PRELOADS, "onnxruntime", ("json",))
    assert forkserver.server_for("onnxruntime", "cuda").alive()
    monkeypatch.setenv("SDOPT_TEST_BAD_FORK", "1")
    with pytest.raises(RuntimeError, match="would not be able to use CUDA"):
        forkserver.server_for("onnxruntime", "cuda")
    cpu = forkserver.server_for("onnxruntime", "cpu")  # a server for CPU workers does not ask: the same import is fine there
    assert cpu.alive()
    cpu.close()
