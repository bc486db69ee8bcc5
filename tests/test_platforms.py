"""sdopt off Linux, simulated on Linux: what Windows' and macOS' Python lack (the resource and fcntl modules, os.fork,
signal.SIGHUP, /proc) made missing in this process, and the everyday paths driven through it. Nothing here runs on
Windows or macOS itself: README's "What runs where" says what is tested there and what is only simulated."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_peak_memory_without_resource_or_proc_is_said_not_measured(monkeypatch):
    """Windows has no resource module: importing sdopt.runtime.memory (every generate's pipeline imports it) failed with
    ModuleNotFoundError, so no generate, bench or serve could run there."""
    import sdopt.runtime.memory as memory

    monkeypatch.setitem(sys.modules, "resource", None)
    importlib.reload(memory)
    monkeypatch.setattr(memory, "_PROC_STATUS", "/nonexistent/proc/self/status")
    monkeypatch.setattr(memory, "_said_unmeasured", False)
    with pytest.warns(UserWarning, match="peak memory is not measured on this platform"):
        assert memory.rss_peak_bytes() == 0


def test_a_bench_where_peak_memory_is_not_measured_records_none_and_the_gate_says_why(tiny_model, tiny_pipeline, monkeypatch, tmp_path):
    """On Windows (no resource module, no /proc) a bench row's peak memory read 0 bytes: the report said "0 MiB" as if
    measured, and the gate's peak_memory rule passed it (-100% against a Linux baseline). Now the row records none, and
    the gate's MISSING verdict comes with a note saying why."""
    import copy
    import json
    import warnings
    from pathlib import Path

    import sdopt
    import sdopt.runtime.memory as memory
    from sdopt.bench.gate import gate
    from sdopt.bench.worker import measure

    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.setattr(memory, "_PROC_STATUS", "/nonexistent/proc/self/status")
    monkeypatch.setattr(sdopt, "load", lambda *a, **k: tiny_pipeline)
    job = {"output_dir": str(tmp_path), "path": str(tiny_model), "device": "cpu", "precision": None, "prompts": ["a fox"],
           "seeds": [0], "steps": 1, "guidance_scale": 7.5, "height": 64, "width": 64, "scheduler": "euler", "warmup": 1, "runs": 1,
           "max_seconds": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "peak memory is not measured on this platform", said once
        raw = measure(job)
    assert raw["peak_memory_bytes"] is None and raw["process_peak_rss_bytes"] is None and raw["peak_memory_kind"] == "rss"

    baseline = json.loads((Path(__file__).parents[1] / "reports/ci/baselines/avx2-fma.json").read_text())
    current = copy.deepcopy(baseline)
    row = next(a for a in current["artifacts"] if a["name"] != current["reference"])
    row["peak_memory_bytes"] = raw["peak_memory_bytes"]
    result = gate(current, {"peak_memory": "+5%"}, baseline)
    checks = [c for c in result.checks if c.artifact == row["name"]]
    assert [c.verdict for c in checks] == ["MISSING", "ok"]  # peak_memory, then the status check the gate adds
    assert any(n.startswith(f"{row['name']} peak_memory: not measured in this run") for n in result.notes), result.notes


def test_serve_runs_where_there_is_no_sighup(tiny_model, monkeypatch):
    """Windows has no signal.SIGHUP: the server's run (which stops on SIGHUP as on SIGTERM) and serve's end (which says a
    SIGHUP stop) raised AttributeError there, so `sdopt serve` never served on Windows."""
    import signal
    from types import SimpleNamespace

    import uvicorn

    import sdopt.serve.server as server
    from sdopt.serve.settings import ServeSettings

    monkeypatch.delattr(signal, "SIGHUP")
    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: ran.append("uvicorn"))
    server.http_server(SimpleNamespace(state=SimpleNamespace(worker=None)), "127.0.0.1", 0).run()
    assert ran == ["uvicorn"]
    monkeypatch.setattr(server, "http_server", lambda app, host, port, **http: SimpleNamespace(run=lambda: ran.append("served")))
    server.serve(tiny_model, ServeSettings(port=0))
    assert ran == ["uvicorn", "served"]


def test_bench_and_optimize_folders_without_fcntl_are_used_unlocked_and_say_so(tmp_path, monkeypatch):
    """Windows has no fcntl: `sdopt bench -o` and `sdopt optimize` (their folder locks) ended in ModuleNotFoundError
    before any work. There the folder is used unlocked, said in one warning."""
    from sdopt.locks import check_not_locked, folder_lock

    monkeypatch.setitem(sys.modules, "fcntl", None)
    out = tmp_path / "report"
    check_not_locked(out, "bench", "-o")
    with pytest.warns(UserWarning, match=r"-o .*report is not locked against a second sdopt command on this platform"):
        with folder_lock(out, "bench", "-o"):
            check_not_locked(out, "bench", "-o")
            assert out.is_dir()
    assert list(out.iterdir()) == []  # no lock file left behind


def test_a_killed_exports_folder_is_judged_without_os_kill_on_windows(tmp_path, monkeypatch):
    """Whether a killed export's temporary folder is stale was asked with os.kill(pid, 0): on Windows signal 0 is
    CTRL_C_EVENT, a Ctrl-C for a console process group, and a pid that is none raises OSError (WinError 87), which every
    export into the same place then ended in. Windows asks OpenProcess instead (stubbed here: this is Linux)."""
    import os
    import socket

    from sdopt import outputs

    left = tmp_path / ".model.tmp-0badcafe"
    left.mkdir()
    (left / outputs.INCOMPLETE_MARKER).write_text(f"an sdopt command was writing this folder and did not finish: "
                                                 f"pid 4242 host {socket.gethostname()}\n")

    def windows_kill(pid, sig):
        raise OSError(22, "The parameter is incorrect")  # as Windows' os.kill(pid, 0) for a pid that is no process group

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", windows_kill)
    asked = []
    monkeypatch.setattr(outputs, "_windows_pid_alive", lambda pid: asked.append(pid) or False, raising=False)
    assert outputs.stale_temp_folders(tmp_path, "model") == [left]
    assert asked == [4242]


def test_a_generate_summary_where_peak_memory_is_not_measured_says_so():
    """Where the platform gives no peak (Windows: the memory figure reads 0) the summary said "peak memory 0 MiB (rss)",
    read as a measurement."""
    from sdopt.request import GenerateResult, StageTimings

    timings = StageTimings(text_encoder=0.01, unet_steps=[0.02], vae_decoder=0.01, total=0.04)
    assert GenerateResult(images=[None], latents=None, timings=timings, memory={"rss": 0}).summary().endswith(
        "; peak memory not measured on this platform")
    assert GenerateResult(images=[None], latents=None, timings=timings, memory={"rss": 2**30}).summary().endswith(
        "; peak memory 1024 MiB (rss)")


@pytest.mark.parametrize("path", [r"C:\Users\me\taesd", r"D:\models\taesd"])
def test_a_windows_path_in_double_quotes_in_a_profile_says_how_to_write_it(tmp_path, path):
    """vae_decoder = "C:\\Users\\me\\taesd" in a profile: tomllib said "Invalid hex value" (\\U) or "Unescaped '\\'", and
    nothing of quoting; a Windows user's every path has backslashes."""
    from sdopt.bench.profiles import load_profile
    from sdopt.errors import SdoptError

    profile = tmp_path / "mine.toml"
    profile.write_text(f'name = "mine"\ndevice = "cpu"\n[[artifacts]]\nname = "x"\nvae_decoder = "{path}"\n', encoding="utf-8")
    with pytest.raises(SdoptError, match=r"write a Windows path in single quotes \('C:\\models\\x'\) or with '/'"):
        load_profile(str(profile))
    profile.write_text(f"name = \"mine\"\ndevice = \"cpu\"\n[[artifacts]]\nname = \"x\"\nvae_decoder = '{path}'\n", encoding="utf-8")
    with pytest.raises(SdoptError, match="vae_decoder is not read on the checkpoint's entry"):  # read whole: on to the next check
        load_profile(str(profile))


def test_a_bench_off_linux_records_the_isa_cap_it_ran_under(monkeypatch):
    """Without /proc/cpuinfo (Windows, macOS) the machine fingerprint stopped at the CPU's model: a bench run under
    ONEDNN_MAX_CPU_ISA did not record it, so its report and the gate took it for this CPU's own speed."""
    import os
    from pathlib import Path

    from sdopt import hardware, machine

    real_read_text = Path.read_text

    def no_proc(self, *args, **kwargs):
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS and Windows have none
    hardware.cpuinfo_flags.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    try:
        info = machine._cpu()
    finally:
        hardware.cpuinfo_flags.cache_clear()
    assert info["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert info["model"] and info["logical_cores"] and "usable_cores" not in info and "isa" not in info


def test_the_free_port_check_binds_as_uvicorn_does_on_windows(monkeypatch):
    """The check before the load set SO_REUSEADDR, as asyncio (uvicorn) does on POSIX. On Windows asyncio does not, and
    there SO_REUSEADDR lets a socket bind a port another process listens on: the busy port passed the check and uvicorn
    failed after the load, said as a port "taken while the model loaded"."""
    import os
    import socket

    from sdopt.serve.server import check_port_free

    options = []
    real_setsockopt = socket.socket.setsockopt
    monkeypatch.setattr(socket.socket, "setsockopt", lambda self, *option: options.append(option) or real_setsockopt(self, *option))
    check_port_free("127.0.0.1", 0)
    assert (socket.SOL_SOCKET, socket.SO_REUSEADDR, 1) in options  # POSIX: as before
    options.clear()
    with monkeypatch.context() as windows:
        windows.setattr(os, "name", "nt")
        check_port_free("127.0.0.1", 0)
    assert options == []


def test_no_home_folder_on_windows_is_said_in_one_line(monkeypatch):
    """No home folder (Windows: USERPROFILE unset) was to be said naming the user id, from os.getuid, which Windows
    lacks: an AttributeError traceback instead (an OpenVINO load, a hashed artifact, a TensorRT build)."""
    import os
    from pathlib import Path

    from sdopt.errors import SdoptError
    from sdopt.file_reading import user_cache_dir

    for name in ("SDOPT_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("Could not determine home directory."))))
    monkeypatch.delattr(os, "getuid")
    with pytest.raises(SdoptError, match="no cache folder: HOME is unset and this user has no home folder; set SDOPT_CACHE_DIR"):
        user_cache_dir()


def _windows_replace(monkeypatch, locked_name: str) -> None:
    """os.replace as Windows answers it for a file another program holds open (a viewer, a spreadsheet)."""
    import os

    real_replace = os.replace

    def replace(src, dst, **kwargs):
        if os.path.basename(dst) == locked_name:
            raise PermissionError(13, "Access is denied")
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_an_image_another_program_holds_open_on_windows_is_said_in_one_line(tmp_path, monkeypatch):
    """generate -o x.png over an x.png a Windows program holds open: the rename of the finished file was a PermissionError
    traceback after the generation. One line says what to do; the old file stays whole and no partial file is left."""
    from sdopt.errors import SdoptError
    from sdopt.outputs import files_written_whole

    out = tmp_path / "x.png"
    out.write_bytes(b"the image before")
    _windows_replace(monkeypatch, "x.png")
    with pytest.raises(SdoptError, match=r"cannot replace .*x\.png: Access is denied; if another program has it open"):
        with files_written_whole([out]) as (partial,):
            partial.write_bytes(b"the new image")
    assert out.read_bytes() == b"the image before" and [p.name for p in tmp_path.iterdir()] == ["x.png"]


# What Windows' Python lacks, made missing after the third-party libraries are imported (their Linux builds need them:
# psutil's Linux module imports resource) and before sdopt's own code runs.
_WINDOWS_SHAPED = """
import importlib, os, signal, sys
for lib in ("psutil", "torch", "diffusers.models.autoencoders", "diffusers.models.unets", "diffusers.schedulers",
            "diffusers.loaders.peft", "transformers"):
    importlib.import_module(lib)
for name in ("resource", "fcntl"):
    sys.modules[name] = None
for name in ("fork", "getuid", "geteuid", "sched_getaffinity"):
    if hasattr(os, name):
        delattr(os, name)
del signal.SIGHUP
import sdopt.runtime.memory
sdopt.runtime.memory._PROC_STATUS = "/nonexistent/proc/self/status"
from sdopt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sdopt_generate_runs_in_a_windows_shaped_process(tiny_model, tmp_path):
    """The everyday path, end to end, in a process without resource, fcntl, os.fork, SIGHUP, getuid and /proc: it ended
    in ModuleNotFoundError (resource) before this branch."""
    import subprocess

    out = tmp_path / "x.png"
    done = subprocess.run([sys.executable, "-c", _WINDOWS_SHAPED, "generate", str(tiny_model), "-p", "a cat", "--steps", "2",
                           "--height", "64", "--width", "64", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and "peak memory not measured on this platform" in done.stderr


def test_a1111s_memory_endpoint_answers_where_the_os_does_not_tell_it(monkeypatch):
    """GET /sdapi/v1/memory read os.sysconf: Windows has none and macOS no SC_AVPHYS_PAGES, so AUTOMATIC1111 clients
    asking it got a 500 there. "ram" now holds an error, as AUTOMATIC1111's own answer does when it cannot read it."""
    import os

    from sdopt.serve.api_a1111_lists import memory

    assert set(memory()["ram"]) == {"free", "used", "total"}  # Linux: as before
    real_sysconf = os.sysconf

    def macos_sysconf(name):
        if name == "SC_AVPHYS_PAGES":
            raise ValueError("unrecognized configuration name")
        return real_sysconf(name)

    monkeypatch.setattr(os, "sysconf", macos_sysconf)
    assert memory()["ram"] == {"error": "not reported by sdopt serve on this platform"}
    monkeypatch.delattr(os, "sysconf")
    assert memory() == {"ram": {"error": "not reported by sdopt serve on this platform"}, "cuda": {"error": "not reported by sdopt serve"}}


@pytest.mark.parametrize("platform, asked, said", [("darwin", "fork", True), ("win32", "fork", True), ("darwin", None, False),
                                                   ("linux", "fork", False), ("darwin", "cold", False)])
def test_worker_start_fork_asked_for_where_workers_start_cold_is_said_once(monkeypatch, platform, asked, said):
    """`sdopt bench --worker-start fork` on macOS or Windows ran every worker cold, and only the report's settings said
    so: load times that include the imports, read as the fork's. Asked for by name there, the command line says it;
    the default (fork where it can) stays quiet, as README's "What runs where" says."""
    from sdopt.bench.settings import BenchSettings

    monkeypatch.setattr(sys, "platform", platform)
    lines: list[str] = []
    settings = BenchSettings.resolve(None, None, lines.append, worker_start=asked)
    assert settings.worker_start == (asked or "fork")
    assert [line for line in lines if "--worker-start fork" in line] == (
        [f"--worker-start fork: workers start cold here (fork is for cpu and cuda devices on Linux; this is cpu on {platform}): "
         "load times include the imports"] if said else [])
