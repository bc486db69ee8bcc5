"""`sdopt bench`: every artifact on the same prompts and seeds, one worker process each,
then speed, memory and quality against the reference, in one report (``bench/assemble.py``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from sdopt.bench.artifacts import Entry, check_static_shapes, collect
from sdopt.bench.assemble import assemble_report
from sdopt.bench.forkserver import server_for, uses_fork_server
from sdopt.bench.profiles import HardwareProfile
from sdopt.bench.rounds import merge_rounds, rotated
from sdopt.bench.settings import BenchSettings
from sdopt.bench.worker import PROGRESS_FILE
from sdopt.errors import SdoptError
from sdopt.locks import check_not_locked, folder_lock
from sdopt.write_failures import DISK_FULL, file_too_large, says_out_of_space, says_past_file_size_limit


# --- running ----------------------------------------------------------------------------
def worker_job(entry: Entry, settings: BenchSettings, output_dir: str) -> dict:
    """What one worker measures (python -m sdopt.bench.worker JOB.json RESULT.json), wherever it runs."""
    return {**asdict(settings), "path": str(entry.path), "precision": entry.precision, "output_dir": output_dir,
            "run_settings": settings.run.get(entry.manifest.backend), "load_options": entry.options, "request_options": entry.request}


def worker_command(job_file: Path, result_file: Path) -> list[str]:
    return [sys.executable, "-m", "sdopt.bench.worker", str(job_file), str(result_file)]


class WorkerStarts:
    """Starts each worker: forked from its backend's fork server where one applies (bench/forkserver.py),
    else a fresh ``python -m sdopt.bench.worker``. A server that cannot start is said once per bench."""

    def __init__(self, settings: BenchSettings):
        self.settings = settings
        self.warnings: list[str] = []
        self._failed: set[str] = set()

    def run(self, entry: Entry, work: Path, timeout: float | None) -> int | None:
        """The worker's exit status, or None when it did not finish within ``timeout`` (it is killed)."""
        job, result, log = work / "job.json", work / "result.json", work / "worker.log"
        backend = entry.manifest.backend
        if uses_fork_server(self.settings.worker_start, self.settings.device, backend) and backend not in self._failed:
            try:
                server = server_for(backend, self.settings.device)
            except (OSError, RuntimeError) as exc:  # its workers start cold instead: slower, the same figures
                self._failed.add(backend)
                self.warnings.append(f"{exc}; its workers started cold (load times include the imports)")
                print(f"sdopt bench: warning: {self.warnings[-1]}", file=sys.stderr)
            else:
                return server.run(job, result, log, timeout)
        with open(log, "w") as out:
            try:
                return subprocess.run(worker_command(job, result), stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:  # subprocess.run has killed it
                return None


def _run_worker(entry: Entry, settings: BenchSettings, out: Path, timeout: float | None, starts: WorkerStarts,
                round_index: int | None = None, show: Callable[[str], None] | None = None) -> dict:
    """One worker's result; ``show`` is given what the worker says it is doing while it runs (for the progress bar)."""
    work = out / "raw" / slug(entry.name)
    if round_index is not None:
        work = work / f"round-{round_index + 1}"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", PROGRESS_FILE):
        (work / stale).unlink(missing_ok=True)
    (work / "job.json").write_text(json.dumps(worker_job(entry, settings, str(work)), indent=2))
    with watch_progress(work / PROGRESS_FILE, show):
        status = starts.run(entry, work, timeout)
    try:  # where it was when it stopped: said with a timeout or a death, removed after a result
        doing = (work / PROGRESS_FILE).read_text(encoding="utf-8").strip()
        (work / PROGRESS_FILE).unlink()
    except OSError:
        doing = ""
    at = f" (it was at: {doing})" if doing else ""
    if status is None:
        return {"status": "failed", "error": f"did not finish within {timeout:.0f} s{at}"}
    if not (work / "result.json").is_file():
        return {"status": "failed", "error": f"the worker process died (exit status {status}){at}; see {work / 'worker.log'}"}
    result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    result["work_dir"] = str(work.relative_to(out))
    if result.get("artifact_id") not in (None, entry.manifest.artifact_id):
        # Another command (export --force) replaced it after the bench read its manifest: the row would give the
        # old artifact's id, size and settings to the new one's figures.
        return {"status": "failed", "error": f"{entry.path} was replaced by another command while the bench ran (artifact "
                f"{entry.manifest.artifact_id} when the bench began, {result['artifact_id']} when its worker loaded it): bench it again"}
    return result


PROGRESS_EVERY_S = 0.5  # how often the bar reads what the running worker says


@contextlib.contextmanager
def watch_progress(file: Path, show: Callable[[str], None] | None) -> Iterator[None]:
    """While the block runs, ``show`` each new line a worker writes to ``file`` (worker.say): a long artifact (minutes per
    image on a real model) moves the bar between its loading, warm-ups and measured images, not only when it ends. The
    worker is another process: a thread here reads the file twice a second, nothing of the worker's CPUs."""
    if show is None:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        last, stopping = None, False
        while not stopping:
            # Once more after the worker ended: its last line ("4/4 images measured") is what the bar keeps showing,
            # not whichever line the last read before it happened to catch.
            stopping = stop.wait(PROGRESS_EVERY_S)
            try:
                line = file.read_text(encoding="utf-8").strip()
            except OSError:
                continue  # not written yet
            if line and line != last:
                show(last := line)

    thread = threading.Thread(target=watch, name="bench-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def slug(name: str) -> str:
    """A row's folder under raw/: the name where it is safe as a file name everywhere, else its safe characters and a
    digest of the whole name. Without the digest, rows named 名前 and стиль (or 'a b' and 'a_b') shared raw/_/, the second
    worker's images replaced the first's, and the report compared an artifact's images with themselves (PSNR 100 dB)."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)
    if safe == name:
        return name
    return f"{safe}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def run_bench(
    artifacts: list[str],
    reference: str,
    out: str | Path,
    settings: BenchSettings,
    profile: HardwareProfile | None = None,
    timeout: float | None = None,
    progress: bool = True,
    force: bool = False,
    names: dict[str, str] | None = None,
) -> dict:
    """Bench ``artifacts`` against ``reference`` into the folder ``out`` (refused when it holds another bench's report,
    unless ``force``: check_report_folder). ``names``: a row name per argument (a profile's names for what it built)."""
    from tqdm import tqdm

    from sdopt.bars import set_status

    from sdopt.bench.report import require_report_libraries

    require_report_libraries()  # the bench extra, not after every artifact has run
    entries = collect(artifacts, reference, names)
    check_static_shapes(entries, settings)
    check_device_here(settings.device, entries)
    check_report_folder(out, force)

    rounds = settings.rounds
    results: dict[str, list[dict]] = {entry.name: [] for entry in entries}
    warnings = []
    interrupted, running = False, None
    starts = WorkerStarts(settings)

    def said_interrupted(warning: str, writing: str) -> None:
        """An interrupted bench's warning, in its report and on stderr with what it writes meanwhile."""
        warnings.append(warning)
        print(f"sdopt bench: {warning}; {writing} (further interrupts in the next {PARTIAL_GRACE_S:.0f} s wait for it)", file=sys.stderr)

    with contextlib.ExitStack() as deferred:
        # Held until the report is written: a second bench into this folder had written its workers' results into the
        # same raw/ (or, with --force, removed them) and exited 0, its report naming one run's request over the other's rows.
        deferred.enter_context(folder_lock(Path(out), "bench", "-o"))
        out = prepare_report_folder(out, force)
        try:
            with tqdm(total=len(entries) * rounds, desc="bench", unit="artifact", file=sys.stderr, disable=not progress) as bar:
                for r in range(rounds):
                    for entry in rotated(entries, r):
                        label = entry.name + (f" (round {r + 1}/{rounds})" if rounds > 1 else "")
                        set_status(bar, label)
                        done = results[entry.name]
                        if not (done and done[-1].get("status") != "ok"):  # a failed artifact is not tried again
                            running = entry.name
                            show = (lambda line, label=label: set_status(bar, f"{label}: {line}")) if progress else None
                            done.append(_run_worker(entry, settings, out, timeout, starts, r if rounds > 1 else None, show))
                            running = None
                            _stop_on_a_full_disk(done[-1], out)
                        bar.update()
        except KeyboardInterrupt:
            # Ctrl-C, or SIGTERM from a time limit (sdopt.cli turns it into this): the running worker is
            # killed (subprocess.run, or the fork server's client, does so on any exception), and what
            # finished still makes a report. A second Ctrl-C (Ctrl-C pressed twice, or a CI runner's SIGTERM
            # after it) while that report is written would leave raw/ alone, or a report without its
            # report.html: from here further interrupts wait, for a bounded time, until it is written.
            deferred.enter_context(interrupts_deferred(PARTIAL_GRACE_S, "still writing the partial report of the artifacts that finished"))
            said_interrupted(interrupted_warning(results, entries[0].name, out), f"writing their report to {out}")
            interrupted = True
            if running is not None and not results[running]:  # its worker was killed in its first round: not one that never started
                results[running] = [{"status": "failed", "error": "killed: the bench was interrupted while this artifact ran"}]
        raws = {name: merge_rounds(done) if done else NOT_RUN for name, done in results.items()}
        if not interrupted:
            if raws[entries[0].name].get("status") != "ok":
                warnings.append(f"the reference failed ({raws[entries[0].name].get('error')}): no artifact could be compared with it")
            try:
                return assemble_report(entries, raws, settings, out, profile, warnings=[*starts.warnings, *warnings])
            except KeyboardInterrupt:
                # Every artifact ran, and an interrupt while their report was assembled (the FLOP counts and peak probes
                # take seconds) lost all of it: no report, raw/ alone. Their partial report, as above.
                deferred.enter_context(interrupts_deferred(PARTIAL_GRACE_S, "still writing the report of the artifacts, which all finished"))
                said_interrupted(f"interrupted while the report was assembled: all {len(entries)} artifacts finished and are reported",
                                 f"writing it to {out} without the FLOP counts")
        warnings.append("FLOP counts and matmul peaks were not measured for this partial report (GFLOP/s and 'of peak' are empty), "
                        "to write it quickly")
        assemble_report(entries, raws, settings, out, profile, warnings=[*starts.warnings, *warnings], counted=False)
    # The report is written, but the run is not what was asked: the command exits 130, and a caller that
    # keeps benches (sdopt optimize's resumable work folder) does not keep this one as done.
    raise KeyboardInterrupt


def _stop_on_a_full_disk(result: dict, out: Path) -> None:
    """A worker that failed because the disk is full (or a file passed ulimit -f): every artifact after it would fail the same way (minutes each),
    and the report could not be written. The bench stops, and the results it wrote are removed: a truncated image was
    left in raw/, and a bench run again into the folder was refused as holding another bench's report."""
    error = str(result.get("error", ""))
    if result.get("status") == "ok":
        return
    if says_out_of_space(error):
        stopped, advice = "a disk it writes to is full", DISK_FULL
    elif says_past_file_size_limit(error):  # ulimit -f: every row failed, one after the other, "File too large"
        stopped, advice = file_too_large()
    else:
        return
    shutil.rmtree(out / "raw", ignore_errors=True)
    raise SdoptError(f"the bench stopped: {stopped} ({error}), which every artifact after it would meet; "
                     f"what it wrote in {out} is removed; {advice}")


# How long an interrupted bench ignores further interrupts while it writes its partial report (1-2 s on the tiny model,
# a few more with many images): past it, one more interrupt abandons the report (its files are written whole, or not).
PARTIAL_GRACE_S = 30.0


@contextlib.contextmanager
def interrupts_deferred(grace_s: float, doing: str) -> Iterator[None]:
    """SIGINT and SIGTERM ignored, each said on stderr, for ``grace_s`` seconds while the block runs; after that one
    interrupts it (KeyboardInterrupt). Outside the main thread (no signal handlers there) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    start = time.monotonic()

    def handler(signum, frame):
        waited = time.monotonic() - start
        if waited > grace_s:
            raise KeyboardInterrupt
        # os.write, not print: a handler that prints while the interrupted code prints to stderr is a reentrant call.
        os.write(2, f"sdopt bench: {doing}; interrupt again after {grace_s - waited:.0f} s to abandon it\n".encode())

    earlier = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, was in earlier.items():
            signal.signal(sig, signal.SIG_DFL if was is None else was)


NOT_RUN = {"status": "failed", "error": "not run: the bench was interrupted before this artifact's turn"}


# What a bench writes into its report folder; --force removes these (and only these) from an earlier bench's folder.
REPORT_FILES = ("report.json", "results.csv", "report.md", "report.html")
RAW = "raw"


def check_device_here(device: str, entries: list[Entry] = ()) -> None:
    """Refused before anything is built or run: a device this machine lacks (each worker would fail, and the report's
    matmul probe after them was a traceback): a CUDA bench where torch sees no CUDA GPU; an OpenVINO device (gpu, npu)
    that OpenVINO does not find, asked of the backends of ``entries`` that run on it."""
    from sdopt.runtime.backends import check_cuda_index, device_kind, get_backend

    check_cuda_index(device)  # the probe's torch device too
    kind = device_kind(device)
    if kind not in ("cpu", "cuda"):
        reference = get_backend(entries[0].manifest.backend) if entries else None
        if reference is not None and kind not in reference.precisions:
            raise SdoptError(f"the reference {entries[0].name} is a {reference.name} artifact, and the {reference.name} backend does not run "
                             f"on device '{device}' (it runs on: {', '.join(reference.precisions)}): give a reference that does, or another --device")
        for backend in map(get_backend, sorted({e.manifest.backend for e in entries})):
            present = getattr(backend.implementation(), "check_device", None) if kind in backend.precisions else None
            if present:
                present(device)
    if kind != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SdoptError(f"device {device!r} was asked for but torch sees no CUDA GPU here (is the CUDA build of torch installed? "
                         "see README): bench on the GPU machine, or pass --device cpu")


def check_report_folder(out: str | Path, force: bool = False) -> Path:
    """The report folder, refused before any work when it is a file (or below one), a model's folder, or holds another
    bench's report (unless ``force``: run_bench then removes that report's files, and nothing else, before it runs)."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise SdoptError(f"-o {out}: {path} is a file; give a folder for the report (it is created if missing)")
    check_not_locked(out, "bench", "-o")  # another bench writing there now: said before its raw/ reads as a report to replace
    if any((out / marker).is_file() for marker in ("sdopt.json", "model_index.json")):  # its report files would land in a model
        raise SdoptError(f"-o {out} is a model or artifact folder: give a folder of its own for the report")
    held = earlier_report(out)
    if held:
        # Written over, the old report's raw/ results of artifacts this run does not measure would stay beside the new
        # report, and a partial run would leave the old report.json, read by sdopt gate as this run's.
        if not _is_bench_report(out):
            raise SdoptError(f"-o {out} holds {', '.join(held)}, which sdopt bench did not write (no bench report.json, no bench raw/ "
                             "results): move them out, or choose another folder for the report")
        if not force:
            raise SdoptError(f"-o {out} holds the report of another bench ({', '.join(held)}): pass --force to replace it (its "
                             f"{', '.join((*REPORT_FILES, RAW + '/'))} are removed, other files kept), or choose another folder")
    from sdopt.outputs import check_can_create_in, nearest_existing

    check_can_create_in(nearest_existing(out), out)
    return out


def earlier_report(out: Path) -> list[str]:
    """The files and folders of a bench report already in ``out`` (raw/ alone: a bench interrupted before its report)."""
    return [name + ("/" if name == RAW else "") for name in (*REPORT_FILES, RAW) if (out / name).exists() or (out / name).is_symlink()]


def _is_bench_report(out: Path) -> bool:
    """Whether what ``out`` holds under the bench's names was written by a bench: a report.json of the bench's schema, or
    (a bench stopped before its report) a raw/ whose every folder holds a worker's job.json, directly or per round."""
    from sdopt.bench.assemble import REPORT_SCHEMA

    try:
        return json.loads((out / "report.json").read_text(encoding="utf-8")).get("schema") == REPORT_SCHEMA
    except (OSError, ValueError, AttributeError):
        pass
    raw = out / RAW
    if (out / "report.json").exists() or not raw.is_dir() or raw.is_symlink():
        return False
    runs = list(raw.iterdir())
    return bool(runs) and all(r.is_dir() and not r.is_symlink() and ((r / "job.json").is_file() or any(r.glob("round-*/job.json")))
                              for r in runs)


def prepare_report_folder(out: str | Path, force: bool = False, create: bool = True) -> Path:
    """The report folder, checked (check_report_folder), emptied of an earlier bench's report when ``force``, created
    (unless not ``create``: a Ray matrix creates its folders once its jobs can start)."""
    out = check_report_folder(out, force)
    for name in earlier_report(out):
        path = out / name.rstrip("/")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def interrupted_warning(results: dict[str, list[dict]], reference: str, out: Path) -> str:
    """What an interrupted bench says in its report, or KeyboardInterrupt again when nothing can be compared (``out``:
    the report folder)."""
    ref = results[reference]
    if not ref or ref[-1].get("status") != "ok":  # without the reference's images and timings there is nothing to compare
        if not ref:
            # Stopped while the reference, which runs first, was running: raw/ holds only its unfinished worker's files
            # (--force removed an earlier bench's). Left, they read as another bench's report, and the same command run
            # again was refused without --force. (A reference that failed keeps its worker.log, as without Ctrl-C.)
            shutil.rmtree(out / RAW, ignore_errors=True)
        print(f"sdopt bench: interrupted before the reference ({reference}) finished: no report written", file=sys.stderr)
        raise KeyboardInterrupt
    finished = sum(1 for done in results.values() if done and done[-1].get("status") == "ok")
    return (f"interrupted: {finished} of {len(results)} artifacts finished and are reported; the one running when it stopped "
            "is marked killed, the others not run")
