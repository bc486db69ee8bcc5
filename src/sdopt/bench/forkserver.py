"""Bench workers forked from a process that has already imported their backend's libraries.

A worker that loads a torch artifact spends ~6 s importing torch, Diffusers and what they pull in
(scipy, peft, torch._inductor ...) before it reads a weight: most of a tiny-model worker's life, and
the same every time. One fork server per backend imports them once (per bench process: ``server_for``);
each worker is then forked from it (``os.fork``), loads its artifact and measures as before, in a
process of its own.

What stays the same: one process per artifact and round, its own peak memory, a killed or crashed
worker is that artifact's failure only. Peak memory is RSS, so a forked worker must hold what a cold
one would: the server imports only modules every artifact of that backend imports anyway
(``PRELOADS``, checked by tests/test_forkserver.py), and a forked child maps the shared libraries'
pages again (``_map_again``) — the kernel copies a parent's page tables for its anonymous memory
but not for file-backed mappings, and torch's libraries alone hold ~100 MB of those. What changes:
``load_s`` no longer counts importing those modules (it is the artifact's own load: weights,
compilation, graph set-up).

On CUDA a forked child can use the GPU only if its parent never initialised CUDA, and importing
torchao asks ``torch.cuda.is_available()``, which does. A server for CUDA workers (``--cuda``) has
torch answer that through NVML instead (``PYTORCH_NVML_BASED_CUDA_CHECK=1``, torch's documented way
not to poison fork), and before saying ready checks that CUDA is uninitialised and that a forked
child is not in torch's "bad fork" state; if either fails it says why and the bench starts that
backend's workers cold. ``--worker-start cold`` (or ``BenchSettings.worker_start``) turns it off.

Protocol (one JSON object per line): the server first says {"ready": true}, or {"ready": false,
"why"} and exits; then for each {"job", "result", "log", "cwd"} the client writes, it forks, answers
{"pid"} at once and {"exit"} (the exit status, negative for a signal) when the worker ends.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What loading and running any artifact of the backend imports anyway (never more: a module a worker
# would not import would count in its peak memory). Diffusers' model and scheduler packages pull in
# torch, transformers, peft, accelerate, scipy and torchao; the exported backends' load reads the
# tokenizer, and their first generate builds a Diffusers scheduler, which imports Diffusers and torch
# (3-5 s that every ONNX and OpenVINO worker spent in its first generate, imported again each time).
PRELOADS: dict[str, tuple[str, ...]] = {
    "torch": ("torch", "diffusers.models.autoencoders", "diffusers.models.unets", "diffusers.schedulers", "transformers"),
    "openvino": ("openvino", "transformers", "torch", "diffusers.schedulers"),
    "onnxruntime": ("onnxruntime", "transformers", "torch", "diffusers.schedulers"),
}
WORKER_STARTS = ("fork", "cold")


def effective_worker_start(worker_start: str, device: str) -> str:
    """What a bench asked to start its workers with gets on this device and OS ("fork" or "cold")."""
    # Linux: the pages a child maps again are read from /proc/self/pagemap.
    forkable = device == "cpu" or _is_cuda(device)
    return "fork" if worker_start == "fork" and forkable and sys.platform.startswith("linux") else "cold"


def _is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def uses_fork_server(worker_start: str, device: str, backend: str) -> bool:
    return effective_worker_start(worker_start, device) == "fork" and backend in PRELOADS


class ForkServer:
    """The client side: start the server for one backend, run workers through it (one at a time), close it."""

    def __init__(self, backend: str, cuda: bool = False):
        self.backend = backend
        # The server's stderr, read back only when it fails to start: a file without a name (unlinked at once), since
        # a named one (/tmp/sdopt-forkserver-BACKEND-*.log) was left behind by every killed bench, one per backend.
        self._log = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen([sys.executable, "-m", "sdopt.bench.forkserver", *(["--cuda"] if cuda else []), *PRELOADS[backend]],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._pending = b""  # read from the server, not yet a whole line
        self._lock = threading.Lock()
        self._worker: int | None = None  # the worker running now
        self.last_worker: int | None = None
        try:
            ready = self._read()
        except RuntimeError:
            ready = None
        if not (ready or {}).get("ready"):
            self._log.seek(0)
            lines = self._log.read().strip().splitlines()
            why = (ready or {}).get("why") or (lines[-1] if lines else None)
            self.close()
            raise RuntimeError(f"the {backend} fork server did not start" + (f": {why}" if why else ""))

    def alive(self) -> bool:
        return self._proc.poll() is None

    def run(self, job_file: Path, result_file: Path, log_file: Path, timeout: float | None) -> int | None:
        """The worker's exit status, or None when it did not finish within ``timeout`` and was killed."""
        with self._lock:
            self._send({"job": str(job_file), "result": str(result_file), "log": str(log_file), "cwd": os.getcwd()})
            try:
                self._worker = self.last_worker = self._read()["pid"]
                done = self._read(timeout)
                if done is None:
                    _kill(self._worker)  # (it may have ended a moment ago: then its own exit status stands)
                    done = self._read()  # its exit: reaped
                    return None if done["exit"] == -signal.SIGKILL else done["exit"]
                return done["exit"]
            except BaseException:  # Ctrl-C / SIGTERM in the bench: the running worker goes with it
                self.close()
                raise
            finally:
                self._worker = None

    def close(self) -> None:
        if self._worker is not None:
            _kill(self._worker)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):  # left open, each was a ResourceWarning at exit (-X dev, -W error)
            pipe.close()
        self._log.close()

    def _send(self, message: dict) -> None:
        self._proc.stdin.write((json.dumps(message) + "\n").encode())
        self._proc.stdin.flush()

    def _read(self, timeout: float | None = None) -> dict | None:
        """The server's next line, or None when none came within ``timeout`` seconds."""
        fd = self._proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            if deadline is not None and not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the {self.backend} fork server exited (status {self._proc.wait()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)


# One server per backend and environment for the life of this process: every bench it runs (a test
# session runs dozens; `sdopt optimize` several) forks from the same one. A server whose environment
# differs from the process's now (a changed variable reaches a cold worker, so it must reach a
# forked one) is replaced.
_servers: dict[tuple, ForkServer] = {}
_servers_lock = threading.Lock()
# Except pytest's PYTEST_CURRENT_TEST, set anew for every phase of every test: keyed on it, each bench a test suite ran
# (ours, or a user's) started its servers again, seconds each. No worker reads it.
_NOT_KEYED = frozenset({"PYTEST_CURRENT_TEST"})


def server_for(backend: str, device: str = "cpu") -> ForkServer:
    cuda = _is_cuda(device)
    key = (backend, cuda, sys.executable, tuple(sorted((k, v) for k, v in os.environ.items() if k not in _NOT_KEYED)))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive():
            for other in [k for k in _servers if k[0] == backend]:  # one per backend at a time: each holds its imports' memory
                _servers.pop(other).close()
            server = _servers[key] = ForkServer(backend, cuda)
    return server


@atexit.register
def close_servers() -> None:
    with _servers_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the server -------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_file_pages() -> list[int]:
    """Addresses of the file-backed pages this process has mapped in (readable mappings only)."""
    pages = []
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith("/") or "r" not in fields[1]:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // _PAGE * 8)
            entries = pagemap.read((end - start) // _PAGE * 8)
            for i, entry in enumerate(struct.unpack(f"{len(entries) // 8}Q", entries)):
                if entry >> 63:  # bit 63: present (readable without privileges; the frame numbers are not)
                    pages.append(start + i * _PAGE)
    return pages


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies, even by SIGKILL: a bench killed outright takes its
    server with it, and the server its worker (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _map_again(pages: list[int]) -> None:
    """Touch each page the server had mapped, so the child's RSS counts them as a cold worker's would
    (~30,000 pages, ~25 ms; they are in the page cache: nothing is read from disk)."""
    for address in pages:
        ctypes.string_at(address, 1)


def _worker_child(request: dict, protocol_fds: tuple[int, ...], pages: list[int]) -> int:
    """In the forked child: the worker's output to its log, then the worker itself."""
    _die_with_parent()
    _map_again(pages)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in protocol_fds:
        os.close(fd)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(request["cwd"])  # the bench's, as a cold worker's would be
    from sdopt.bench import worker

    return worker.main([request["job"], request["result"]])


def _cuda_unforkable() -> str | None:
    """Why a child forked now could not use CUDA, or None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch.cuda.is_initialized():
        return "an import initialised CUDA in the server"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # torch marks a child forked after CUDA was set up; nothing else runs here
        os._exit(3 if torch.cuda._is_in_bad_fork() else 0)
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else "a child forked from the server would not be able to use CUDA (torch: bad fork)"


def serve(argv: list[str]) -> None:
    # Ctrl-C reaches the whole process group: the bench decides what to kill, not the server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the bench died before the line above
        return
    cuda = "--cuda" in argv
    if cuda:  # torch.cuda.is_available() through NVML: it then does not initialise CUDA (torch's documented switch)
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    for name in (a for a in argv if a != "--cuda"):
        importlib.import_module(name)
    importlib.import_module("sdopt.bench.worker")  # and what the worker itself imports
    why = _cuda_unforkable() if cuda else None

    pages = resident_file_pages()

    requests, answers = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # nothing but the protocol on the client's pipe
    answers.write(json.dumps({"ready": why is None, **({"why": why} if why else {})}) + "\n")
    if why:
        return
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker_child(request, (answers.fileno(), requests.fileno()), pages)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        answers.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    serve(sys.argv[1:])
