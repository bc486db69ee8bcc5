"""`sdopt bench --ray`: every (artifact, profile) job a Ray task on a node of the profile's kind,
gathered into one report per profile, the same report.json/CSV/HTML a local run writes.

How things travel:
- an artifact reaches a node by its **path**: a shared filesystem (NFS, a mounted bucket) that every
  node sees at the same path; any size goes. A node that does not see it reports the job failed, saying so.
  (Nothing is shipped through Ray's object store: an sd15 artifact is GBs, SDXL's 13 GB.)
- the results come back through the object store: the worker's result, its images and latents
  (kilobytes to a few MB per artifact) and its log.

Each job runs the same worker process a local bench starts (``python -m sdopt.bench.worker``), so its
load is a cold load and its peak memory its own. A job whose process is killed (the kernel's OOM
killer, a kill) or whose Ray worker or node dies is retried once, then reported failed; a job no node
can take is reported at once. The run as a whole never waits on a job that cannot finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdopt.bench.profiles import HardwareProfile
from sdopt.bench.artifacts import Entry
from sdopt.bench.assemble import assemble_report, precisions_to_probe
from sdopt.bench.report import require_report_libraries
from sdopt.bench.runner import slug, worker_command, worker_job
from sdopt.bench.settings import BenchSettings
from sdopt.cluster.connect import cluster, ray_module
from sdopt.cluster.resources import local_resources, task_options, why_unplaceable
from sdopt.errors import SdoptError, exception_line

RETRIES = 1  # a job that dies is tried once more, then reported failed


class JobProcessKilled(RuntimeError):
    """The worker process died of a signal (OOM killer, a kill): Ray retries the task once."""


@dataclass
class ProfileRun:
    """One profile's share of a matrix: its artifacts, its bench settings, its report folder."""

    profile: HardwareProfile | None
    entries: list[Entry]
    settings: BenchSettings
    out: Path

    @property
    def name(self) -> str:
        return self.profile.name if self.profile else "bench"


# --- on a node ---------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """The worker process dies with the Ray worker that started it (Linux): a killed task leaves no orphan measuring on."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _local_threads_env() -> dict[str, str]:
    """The environment a local run has: Ray sets OMP_NUM_THREADS to a task's num_cpus, which torch obeys and
    ONNX Runtime and OpenVINO ignore; one artifact on 1 thread beside others on every core would skew the
    ratios. So each backend takes the threads it takes locally (or what the profile's [run] tables set), and
    a node kind is meant to run one job at a time (docs/ray.md)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    return env


def _where() -> dict[str, Any]:
    import platform

    ray = ray_module()
    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(), "hostname": platform.node(), "pid": os.getpid()}


JOB_FOLDER_PREFIX = "sdopt-bench-job-"  # then the Ray worker's pid: $TMPDIR/sdopt-bench-job-PID-XXXXXXXX on the node


def _remove_dead_jobs_folders() -> None:
    """The job folders of Ray workers that no longer run on this node: a bench killed while a job ran (SIGKILL of the
    driver takes its local cluster's workers with it; Ray's memory monitor kills a worker) never reached the end of
    its TemporaryDirectory, and left the folder (job, log, images) in the node's $TMPDIR, one more each time."""
    import shutil

    from sdopt.outputs import pid_alive

    for folder in Path(tempfile.gettempdir()).glob(f"{JOB_FOLDER_PREFIX}*-*"):
        pid = folder.name[len(JOB_FOLDER_PREFIX):].partition("-")[0]
        if pid.isdigit() and folder.is_dir() and not folder.is_symlink() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def run_job(job: dict, timeout: float | None) -> dict:
    """One artifact's bench on this node (a Ray task): the worker's result, its files, and where it ran."""
    from sdopt.machine import fingerprint

    where = _where()
    if not Path(job["path"]).exists():
        return {"result": {"status": "failed", "error": f"{job['path']} is not on node {where['hostname']} ({where['ip']}): "
                           "artifacts reach the nodes by path; put them on a filesystem every node mounts at the same path (docs/ray.md)"},
                "files": {}, "node": where}
    _remove_dead_jobs_folders()
    with tempfile.TemporaryDirectory(prefix=f"{JOB_FOLDER_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        (work / "job.json").write_text(json.dumps({**job, "output_dir": tmp}, indent=2))
        with open(work / "worker.log", "w") as log:
            try:
                proc = subprocess.run(worker_command(work / "job.json", work / "result.json"), stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout, preexec_fn=_die_with_parent, env=_local_threads_env())
            except subprocess.TimeoutExpired:
                proc = None
        if proc is not None and proc.returncode < 0 and not (work / "result.json").is_file():
            tail = (work / "worker.log").read_text(errors="replace")[-400:]
            raise JobProcessKilled(f"the worker process was killed by signal {-proc.returncode} on {where['hostname']}; its log ends: {tail!r}")
        if proc is None:
            result = {"status": "failed", "error": f"did not finish within {timeout:.0f} s"}
        elif not (work / "result.json").is_file():
            result = {"status": "failed", "error": f"the worker process died (exit status {proc.returncode}) on {where['hostname']}"}
        else:
            result = json.loads((work / "result.json").read_text(encoding="utf-8"))
        files = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file() and p.name not in ("job.json", "result.json")}
    return {"result": result, "files": files, "node": where, "machine": fingerprint()}


def probe_node(precisions: list[str], device: str) -> dict:
    """The machine fingerprint and matmul ceilings of a node of the profile's kind (the report's "of peak")."""
    from sdopt.bench.assemble import probe_peaks
    from sdopt.machine import fingerprint

    return {"machine": fingerprint(), "peaks": probe_peaks(precisions, device), "node": _where()}


# --- on the driver -----------------------------------------------------------------------------------
def _failure(exc: BaseException) -> str:
    """What a job that Ray gave up on says in the report."""
    ray = ray_module()
    cause = getattr(exc, "cause", None)
    if isinstance(cause, JobProcessKilled) or isinstance(exc, JobProcessKilled):
        return f"killed on both tries (Ray retried it once): {cause or exc}"
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "Ray's memory monitor killed it on both tries (retried once): the node ran out of memory"
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ActorDiedError)):
        return f"its Ray worker or node died on both tries (retried once): {type(exc).__name__}"
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return "cancelled"
    return f"the Ray task failed: {exception_line(exc, last=True)}"


def _unpack(answer: dict, out: Path, entry: Entry) -> dict:
    """The worker's result, its files written under out/raw/NAME/ as a local run writes them."""
    work = out / "raw" / slug(entry.name)
    work.mkdir(parents=True, exist_ok=True)
    for name, data in answer["files"].items():
        (work / Path(name).name).write_bytes(data)
    raw = dict(answer["result"])
    raw["work_dir"] = str(work.relative_to(out))
    raw["node"] = answer.get("node")
    raw["machine"] = answer.get("machine")
    return raw


def refuse_local_settings(rounds: int, worker_start: str | None = None) -> None:
    """What is for a bench on this machine only, refused on Ray: rounds (each artifact runs once on its node kind), and
    fork worker starts asked for (each job is a fresh interpreter on its node: the report would say cold, unasked)."""
    if rounds > 1:
        raise SdoptError("--rounds is for a bench on this machine: on Ray each artifact runs once on its node kind, "
                         "one job at a time per kind; leave --rounds out, or bench here without --ray")
    if worker_start == "fork":
        raise SdoptError("--worker-start fork is for a bench on this machine: on Ray each job runs in a fresh interpreter on its node "
                         "(load times include the imports; the report says cold): leave --worker-start out, or give cold")


def run_matrix(runs: list[ProfileRun], address: str | None = None, timeout: float | None = None, progress: bool = True) -> dict[str, dict]:
    """Every profile's artifacts as Ray tasks on nodes of that profile's kind; one report per profile.
    Returns {profile name: report}."""
    from tqdm import tqdm

    from sdopt.bars import set_status

    refuse_local_settings(max(r.settings.rounds for r in runs))  # before Ray starts
    ray = ray_module()
    require_report_libraries()  # the reports are written here, on the driver
    kinds = [r.profile for r in runs if r.profile is not None]
    with cluster(address, local_resources(kinds)) as info:
        job_task = ray.remote(max_retries=RETRIES, retry_exceptions=[JobProcessKilled])(run_job)
        nodes = ray.nodes()
        raws: dict[str, dict[str, dict]] = {r.name: {} for r in runs}
        pending: dict[Any, tuple[ProfileRun, Entry]] = {}
        for run in runs:
            run.out.mkdir(parents=True, exist_ok=True)
            options = task_options(run.profile)
            why = why_unplaceable(options, nodes, f"profile {run.name}'s jobs")
            for entry in run.entries:
                if why:
                    raws[run.name][entry.name] = {"status": "failed", "error": why}
                    continue
                job = worker_job(entry, run.settings, output_dir="")
                pending[job_task.options(**options).remote(job, timeout)] = (run, entry)
        with tqdm(total=sum(len(r.entries) for r in runs), desc="bench on ray", unit="job", file=sys.stderr, disable=not progress) as bar:
            bar.update(sum(len(v) for v in raws.values()))  # those no node can take
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    run, entry = pending.pop(ref)
                    try:
                        raws[run.name][entry.name] = _unpack(ray.get(ref), run.out, entry)
                    except ray.exceptions.RayError as exc:
                        raws[run.name][entry.name] = {"status": "failed", "error": _failure(exc)}
                    set_status(bar, f"{run.name}: {entry.name}")
                    bar.update(1)
        return {run.name: _report(run, raws[run.name], info) for run in runs}


def _report(run: ProfileRun, raws: dict[str, dict], info: dict) -> dict:
    """Assemble one profile's report with the machine and matmul ceilings of a node of its kind."""
    ray = ray_module()
    options = task_options(run.profile)
    machine = peaks = None
    if why_unplaceable(options, ray.nodes(), "the probe") is None:
        probe = ray.remote(max_retries=RETRIES)(probe_node).options(**options)
        try:
            found = ray.get(probe.remote(precisions_to_probe(run.entries, raws), run.settings.device))
            machine, peaks = found["machine"], found["peaks"]
        except ray.exceptions.RayError as exc:
            print(f"sdopt bench: the peak probe on a {run.name} node failed ({_failure(exc)}): the report has no 'of peak'", file=sys.stderr)
    if machine is None:  # no node of the kind answered: the machine that ran the reference, if any did
        machine = next((r["machine"] for r in raws.values() if r.get("machine")), None) or {"hostname": None, "cpu": {}, "note": "no node of this kind ran"}
        peaks = peaks or {}
    nodes = sorted({(r.get("node") or {}).get("hostname") or "?" for r in raws.values() if r.get("node")})
    # A Ray job runs its worker in a fresh interpreter (run_job): load times include the imports.
    settings = replace(run.settings, worker_start="cold")
    return assemble_report(run.entries, raws, settings, run.out, run.profile, machine=machine, peaks=peaks,
                           cluster={**info, "nodes_used": nodes, "task_options": options})
