"""`sdopt bench`: every artifact on the same prompts and seeds, one worker process each,
then speed, memory and quality against the reference, in one report (``bench/assemble.py``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from sdopt.bench.artifacts import Entry, check_static_shapes, collect
from sdopt.bench.assemble import assemble_report
from sdopt.bench.forkserver import server_for, uses_fork_server
from sdopt.bench.profiles import HardwareProfile
from sdopt.bench.rounds import merge_rounds, rotated
from sdopt.bench.settings import BenchSettings
from sdopt.errors import SdoptError


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
                round_index: int | None = None) -> dict:
    work = out / "raw" / slug(entry.name)
    if round_index is not None:
        work = work / f"round-{round_index + 1}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "result.json").unlink(missing_ok=True)
    (work / "job.json").write_text(json.dumps(worker_job(entry, settings, str(work)), indent=2))
    status = starts.run(entry, work, timeout)
    if status is None:
        return {"status": "failed", "error": f"did not finish within {timeout:.0f} s"}
    if not (work / "result.json").is_file():
        return {"status": "failed", "error": f"the worker process died (exit status {status}); see {work / 'worker.log'}"}
    result = json.loads((work / "result.json").read_text())
    result["work_dir"] = str(work.relative_to(out))
    return result


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def run_bench(
    artifacts: list[str],
    reference: str,
    out: str | Path,
    settings: BenchSettings,
    profile: HardwareProfile | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    entries = collect(artifacts, reference)
    check_static_shapes(entries, settings)
    out = check_report_folder(out)
    out.mkdir(parents=True, exist_ok=True)

    rounds = settings.rounds
    results: dict[str, list[dict]] = {entry.name: [] for entry in entries}
    warnings = []
    interrupted, running = False, None
    starts = WorkerStarts(settings)
    try:
        with tqdm(total=len(entries) * rounds, desc="bench", unit="artifact", file=sys.stderr, disable=not progress) as bar:
            for r in range(rounds):
                for entry in rotated(entries, r):
                    bar.set_postfix_str(entry.name + (f" (round {r + 1}/{rounds})" if rounds > 1 else ""))
                    done = results[entry.name]
                    if not (done and done[-1].get("status") != "ok"):  # a failed artifact is not tried again
                        running = entry.name
                        done.append(_run_worker(entry, settings, out, timeout, starts, r if rounds > 1 else None))
                        running = None
                    bar.update()
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM from a time limit (sdopt.cli turns it into this): the running worker is
        # killed (subprocess.run, or the fork server's client, does so on any exception), and what
        # finished still makes a report.
        warnings.append(interrupted_warning(results, entries[0].name))
        interrupted = True
        print(f"sdopt bench: {warnings[-1]}; writing their report to {out}", file=sys.stderr)
        if running is not None and not results[running]:  # its worker was killed in its first round: not one that never started
            results[running] = [{"status": "failed", "error": "killed: the bench was interrupted while this artifact ran"}]
    raws = {name: merge_rounds(done) if done else NOT_RUN for name, done in results.items()}
    if raws[entries[0].name].get("status") != "ok" and not interrupted:
        warnings.append(f"the reference failed ({raws[entries[0].name].get('error')}): no artifact could be compared with it")
    if interrupted:
        warnings.append("FLOP counts and matmul peaks were not measured for this partial report (GFLOP/s and 'of peak' are empty), "
                        "to write it quickly")
    report = assemble_report(entries, raws, settings, out, profile, warnings=[*starts.warnings, *warnings], counted=not interrupted)
    if interrupted:
        # The report is written, but the run is not what was asked: the command exits 130, and a caller that
        # keeps benches (sdopt optimize's resumable work folder) does not keep this one as done.
        raise KeyboardInterrupt
    return report


NOT_RUN = {"status": "failed", "error": "not run: the bench was interrupted before this artifact's turn"}


def check_report_folder(out: str | Path) -> Path:
    """The report folder, refused before any work when it is a file (or below one), or a model's folder."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise SdoptError(f"-o {out}: {path} is a file; give a folder for the report (it is created if missing)")
    if any((out / marker).is_file() for marker in ("sdopt.json", "model_index.json")):  # its report files would land in a model
        raise SdoptError(f"-o {out} is a model or artifact folder: give a folder of its own for the report")
    from sdopt.fsutil import check_can_create_in, nearest_existing

    check_can_create_in(nearest_existing(out), out)
    return out


def interrupted_warning(results: dict[str, list[dict]], reference: str) -> str:
    """What an interrupted bench says in its report, or KeyboardInterrupt again when nothing can be compared."""
    ref = results[reference]
    if not ref or ref[-1].get("status") != "ok":  # without the reference's images and timings there is nothing to compare
        print(f"sdopt bench: interrupted before the reference ({reference}) finished: no report written", file=sys.stderr)
        raise KeyboardInterrupt
    finished = sum(1 for done in results.values() if done and done[-1].get("status") == "ok")
    return (f"interrupted: {finished} of {len(results)} artifacts finished and are reported; the one running when it stopped "
            "is marked killed, the others not run")
