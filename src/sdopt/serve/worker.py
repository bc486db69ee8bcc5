"""One worker per loaded pipeline: a bounded queue, batching, timeouts, cancel, restart.

The worker thread takes the oldest queued job and every later queued job that
can share its generate call (same size, steps, scheduler and guidance, and for
img2img/inpainting the same strength: see ``JobSpec.batch_key``) up to
``max_batch`` images, and runs them as one call in which each image keeps its
own prompt, seed and init image. Cancel and timeout act between
denoising steps through the loop's progress hook: a job cancelled out of a
batch is answered at once and its slot freed, while its rows finish with the
others (the loop has no way to drop a row mid-call) and are thrown away; when
every job of a call is gone, the call itself stops at the next step.
AUTOMATIC1111's interrupt cancels every running job of its API; its skip does the same
but marks them skipped, so that a request with more iterations goes on with
its next (api_a1111.py).

A generate call that raises fails the jobs it held, with the reason; the
worker goes on. If the worker thread itself dies, the watchdog fails the jobs
it held and starts a new one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import traceback
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError, api_fields
from sdopt.runtime.output_checks import problem_lines
from sdopt.serve import jobs as J
from sdopt.serve.allocator import release_freed_memory
from sdopt.serve.images import latent_preview_png
from sdopt.serve.metrics import Metrics

log = logging.getLogger("sdopt.serve")

FINISHED_KEPT = 1000  # finished jobs kept for GET /v1/jobs/{id}, oldest dropped first
IMAGES_KEPT = 64  # ... of which the newest keep their images (64 SD 1.5 jobs of 4 images at 512²: ~200 MB)
# Kinds of call (JobSpec.batch_key but the steps) whose recent pace the worker keeps to refuse, at submission, a job that
# would run past --job-timeout (Worker.expected_seconds), the least recently run forgotten first; and how long a pace
# is trusted: one measured while the machine was busy would otherwise refuse that kind of job for good.
PACES_KEPT = 32
PACE_TRUSTED_S = 600.0
PREVIEW_EVERY_S = 0.5  # at most one preview per this many seconds per batch (PNG encoding costs)
SHUTTING_DOWN = "the server is shutting down"  # why stop() cancels the jobs it finds (answered 503)


def _in_their_fields(jobs: list[J.Job]) -> AbstractContextManager:
    """Within it, the loop's refusals and warnings name fields as the jobs' API does (errors.api_fields, which serve sets
    around its check of a request: this thread starts without it). What only the run finds (a LoRA file gone from
    --lora-dir since the check, guidance_end unused at guidance 1) told an AUTOMATIC1111 or OpenAI client of Python's
    arguments (loras={...}, guidance_scale=1). A call shared by jobs of two APIs: the loop's own names, as JSON."""
    fields = [job.fields for job in jobs]
    if all(named is None for named in fields):
        return nullcontext()
    return api_fields(fields[0] if all(named == fields[0] for named in fields) else {})


def _pace_key(spec: J.JobSpec) -> tuple:
    """What makes calls run at one pace per step and image: the batch key but the steps (they multiply the pace)."""
    return dataclasses.replace(spec, steps=1).batch_key()


def _requests(jobs) -> str:
    """" (request_id=A, B)" naming the HTTP requests whose jobs a logged failure is about (X-Request-ID)."""
    ids = [job.request_id for job in jobs if job.request_id]
    return f" (request_id={', '.join(dict.fromkeys(ids))})" if ids else ""


class QueueFull(SdoptError):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(SdoptError):
    """A job submitted once stop() has begun: answered 503, as the jobs stop() cancels."""

    def __init__(self):
        super().__init__(SHUTTING_DOWN)


class _StopCall(Exception):
    """Raised from the progress hook when no job of the running call is still wanted."""


FAILING_CALLS = 3  # server-side failures in a row after which /health answers 503


# Added to an error about a file in one of the server's folders (quotes_served_file): its advice is the operator's.
SERVER_FILE = "[a file of this server's: its operator must replace it]"
NO_USABLE_IMAGE = "the generation produced no usable image: "  # then why, by image


def served_folders(settings: Any, pipeline: Any) -> set[str]:
    """Each folder the server was given, as given (a relative --lora-dir loras: its files' errors say loras/bad.safetensors),
    absolute and resolved: a failure that quotes a file in one is about the operator's file (quotes_served_file)."""
    given = [getattr(pipeline, "folder", None), settings.lora_dir, settings.embeddings_dir, settings.image_dir]
    paths = {str(path) for folder in given if folder for path in (Path(folder), Path(folder).absolute(), Path(folder).resolve())}
    return paths - {"."}  # its files are quoted without it (bad.safetensors), and "./" is in many a message


def quotes_served_file(text: str, folders: set[str]) -> bool:
    """Whether an error quotes a path in one of the server's folders (Worker.served_folders): the operator's file, not the
    request, is what failed. A folder as given is matched whole (loras/, not myloras/ nor /data/other/loras/; a served
    "/" not in https://)."""
    return any(re.search(r"(?<![\w.:/\\-])" + re.escape(path) + r"[/\\]", text) for path in folders)


class Worker:
    def __init__(self, pipeline: Any, max_queue: int = 64, max_batch: int = 4, job_timeout: float = 600.0):
        self.pipeline = pipeline
        self.max_queue, self.max_batch, self.job_timeout = max_queue, max_batch, job_timeout
        # A static-shape artifact runs exactly the images per call it was built for (OpenVINO's --batch), TensorRT's
        # engines at most their profile's: requests it takes alone, batched past that, were refused together and
        # every one of them failed.
        manifest = getattr(pipeline, "manifest", None)
        built = (getattr(manifest, "static_shapes", None) or {}).get("batch")
        if not built and getattr(manifest, "export", None):
            from sdopt.tensorrt.profiles import image_ranges

            ranges = image_ranges(manifest.export, manifest.model)
            built = ranges["batch"][2] if ranges else None  # (min, opt, max)
        if built:
            self.max_batch = min(max_batch, built)
        self.metrics = Metrics(queue_depth=lambda: self.queue_depth, running=lambda: len(self.current))
        self._queue: deque[J.Job] = deque()
        self._cond = threading.Condition()
        self.jobs: dict[str, J.Job] = {}
        self._finished_order: deque[str] = deque()
        self.current: list[J.Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._recent_job_seconds: deque[float] = deque(maxlen=20)
        # _pace_key -> (seconds a step per image, when measured, images in the call it was measured in)
        self._paces: dict[tuple, tuple[float, float, int]] = {}
        # Calls in a row that failed on the server's side (not the request's), and the last one's reason: a worker alive
        # but failing every call (a lost GPU, a backend in a bad state) is not healthy either (/health).
        self.failing_calls = 0
        self.last_failure: str | None = None
        # The server's folders, absolute path -> what a client is told (create_app fills it): a job's error quoted the
        # file a failure was about by its absolute path (a broken LoRA file: /home/alice/loras/bad.safetensors).
        self.shown_folders: dict[str, str] = {}
        # The same folders as given too (a relative --lora-dir): an error quoting a file in one is the operator's (create_app fills it).
        self.served_folders: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> "Worker":
        self._stopping = False
        self._start_thread()
        self._watchdog = threading.Thread(target=self._watch, name="sdopt-serve-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending + list(self.current):
            self._finish(job, J.CANCELLED, SHUTTING_DOWN)
        if self._thread:
            self._thread.join(timeout)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sdopt-serve-worker", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    @property
    def failing(self) -> bool:
        """FAILING_CALLS calls in a row failed on the server's side: a restart may be what helps (/health answers 503)."""
        return self.failing_calls >= FAILING_CALLS

    def _failed_call(self, reason: str) -> None:
        self.failing_calls += 1
        self.last_failure = self.shown(reason)  # /health tells it to a caller with the credentials

    def shown(self, text: str | None) -> str | None:
        """``text`` with the server's folders as a client is told them (shown_folders), the longest first: one may hold
        another; a path only where it ends (/srv/a is not /srv/ab nor /srv/a.b, but ends a sentence). The log keeps the whole text."""
        if not text:
            return text
        for path in sorted(self.shown_folders, key=len, reverse=True):
            text = re.sub(re.escape(path) + r"(?=[/\s'\"():,;]|\.?$|\.\s)", lambda _, name=self.shown_folders[path]: name, text)
        return text

    # --- submitting and following ---------------------------------------------------
    def submit(self, job: J.Job, continuing: bool = False) -> J.Job:
        """Queue ``job``; QueueFull past max_queue unless it is ``continuing`` a request already accepted (the hires fix's
        second pass): that one is not refused half done."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if job.id in self.jobs:
                raise SdoptError(f"task id {job.id!r} is already in use: give another force_task_id, or none", field="force_task_id")
            if len(self._queue) >= self.max_queue and not continuing:
                self.metrics.count_rejected()
                raise QueueFull(self.retry_after())
            job.deadline = time.monotonic() + self.job_timeout
            self.jobs[job.id] = job
            self._queue.append(job)
            job.emit("queued", position=len(self._queue))
            self._cond.notify_all()
        return job

    @property
    def queue_depth(self) -> int:
        """Jobs waiting (not running)."""
        return len(self._queue)

    def position(self, job: J.Job) -> int | None:
        """1 for the next job to run; None once it runs or ran."""
        with self._cond:
            for i, queued in enumerate(self._queue):
                if queued is job:
                    return i + 1
        return None

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the recent job time, at least 1."""
        recent = list(self._recent_job_seconds)
        return max(1, round(sum(recent) / len(recent))) if recent else 5

    def expected_seconds(self, spec: J.JobSpec) -> tuple[float, float] | None:
        """(seconds the job's call would take at least, seconds a step of it) at the pace this server's latest call
        of its kind ran at (queue wait not counted), or None where no such call ran in the last PACE_TRUSTED_S. The
        pace of a call of several images is each image's share, less than one alone: an estimate on the low side. A job
        of more images than that call held is counted as that call, no longer: a GPU runs 4 images in little more time
        than 1, and 4 times one image's pace refused a job of 4 that would have finished well within the timeout."""
        measured = self._paces.get(_pace_key(spec))
        if measured is None or time.monotonic() - measured[1] > PACE_TRUSTED_S:
            return None
        seconds_per_image_step, _, images_measured = measured
        per_step = seconds_per_image_step * min(spec.n, images_measured)
        return per_step * spec.steps, per_step

    def _record_pace(self, spec: J.JobSpec, seconds_per_step: float, images: int = 1) -> None:
        key = _pace_key(spec)
        self._paces.pop(key, None)  # to the end: the least recently run kind is dropped first
        self._paces[key] = (seconds_per_step, time.monotonic(), images)
        while len(self._paces) > PACES_KEPT:
            del self._paces[next(iter(self._paces))]

    def cancel(self, job: J.Job, reason: str = "cancelled by the client", skipped: bool = False) -> bool:
        """Cancel one job: removed from the queue, or dropped from its running call. False if it had finished."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
        return self._finish(job, J.CANCELLED, reason, skipped=skipped)

    def interrupt(self, api: str | None = None) -> int:
        """AUTOMATIC1111's interrupt: cancel whatever runs now (of ``api``'s jobs only, where given). Returns how many
        jobs it cancelled."""
        return sum(self.cancel(job, "interrupted") for job in list(self.current) if api in (None, job.api))

    def skip(self, api: str | None = None) -> int:
        """AUTOMATIC1111's skip: cancel whatever runs now (of ``api``'s jobs only, where given), marked skipped
        (Job.skipped), so that the request each job belongs to goes on with its next iteration instead of ending.
        Returns how many jobs it skipped."""
        return sum(self.cancel(job, "skipped", skipped=True) for job in list(self.current) if api in (None, job.api))

    # --- the worker thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                taken = self._take_batch()
                if taken is None:
                    return
                self._execute(*taken)
                # glibc kept what the call freed, and RSS grew with every new size asked (serve/allocator.py)
                release_freed_memory()
        except BaseException as exc:  # the thread is dying: the watchdog restarts it
            log.error("sdopt serve: the worker crashed%s:\n%s", _requests(self.current), traceback.format_exc())
            reason = f"the worker crashed ({type(exc).__name__}: {exc})"
            self._failed_call(reason)
            for job in list(self.current):
                job.internal_error = True
                self._finish(job, J.FAILED, f"{reason}; it was restarted")
            self.current = []

    def _take_batch(self) -> tuple[list[J.Job], Any] | None:
        """The next call's jobs and its GenerateRequest, made under the lock: a job cancelled from now on lets go of
        its init image (_finish) without changing the call."""
        with self._cond:
            while True:
                self._expire_queued()
                if self._stopping:
                    return None
                if self._queue:
                    break
                self._cond.wait(timeout=0.5)
            first = self._queue.popleft()
            key, rows = first.spec.batch_key(), first.spec.n
            batch = [first]
            for job in list(self._queue):
                if rows + job.spec.n > self.max_batch:
                    continue
                if job.spec.batch_key() == key and self._runs_together([*batch, job]):
                    self._queue.remove(job)
                    batch.append(job)
                    rows += job.spec.n
            self.current = batch
            return batch, J.generate_request([job.spec for job in batch])

    def _runs_together(self, jobs: list[J.Job]) -> bool:
        """Whether the call of ``jobs`` passes the pipeline's checks, as each job's own call did when it was submitted:
        a batch is more images in one call, and ONNX Runtime's attention on a CPU needs memory for all of them at once
        (sdopt.runtime.attention_memory). Two one-image jobs that fit alone were failed together, each client told to
        ask "fewer images"; the one that does not fit now waits for the next call."""
        check = getattr(self.pipeline, "check_request", None)  # a stand-in pipeline in tests may lack it
        if check is None:
            return True
        try:
            check(J.generate_request([job.spec for job in jobs]))
        except Exception:  # SdoptError, or anything else: the job runs alone, where what its own call meets is said to it
            return False
        return True

    def _expire_queued(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._queue if j.deadline < now]:
            self._queue.remove(job)
            self._finish(job, J.TIMED_OUT, f"timed out after {self.job_timeout:g} s in the queue")

    def _execute(self, batch: list[J.Job], request: Any) -> None:
        self.metrics.observe_batch(request.batch_size)
        for job in batch:
            job.start(request.batch_size, request.steps)
        clock = {"preview": 0.0}
        latest: dict[str, Any] = {}

        def on_latents(latents: Any) -> None:
            latest["latents"] = latents

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            # The pace of the steps, as seconds per step the job asked (img2img runs strength x steps) per image;
            # measured during a call that times out too, from its first step on: one step of a 1024x1024 image on a
            # CPU can outlast the timeout. The first counts the text encoder's time with it (small beside such a
            # step); from the second on, the pace between steps replaces it.
            if "first_step" not in clock:
                clock["first_step"], clock["first_done"] = now, done
                per_loop_step = (now - clock["call_start"]) / max(done, 1)
            else:
                per_loop_step = (now - clock["first_step"]) / max(done - clock["first_done"], 1)
            self._record_pace(batch[0].spec, per_loop_step * total / batch[0].spec.steps / request.batch_size, request.batch_size)
            self._expire_running(batch)
            if all(job.ended for job in batch):
                raise _StopCall  # nobody wants this call's images any more
            preview = None
            if "latents" in latest and now - clock["preview"] >= PREVIEW_EVERY_S:
                clock["preview"], preview = now, latest["latents"]
            row = 0
            for job in batch:
                if not job.ended:
                    job.advance(done, total)
                    if preview is not None:
                        job.preview_png = latent_preview_png(preview[row])
                    job.emit("step", step=done, steps=total, preview=preview is not None)
                row += job.spec.n

        try:
            clock["call_start"] = time.perf_counter()
            with _in_their_fields(batch):
                result = self.pipeline.generate(request, progress=progress, on_latents=on_latents)
        except _StopCall:
            result = None
        except SdoptError as exc:
            self.current = []
            reason = str(exc)
            if quotes_served_file(reason, self.served_folders):
                # A file the operator put in --lora-dir or --embeddings-dir (or the artifact) that cannot be read: a 422
                # told the client to fix a request it cannot fix. Not counted for /health: a restart reads the same file.
                log.error("sdopt serve: generate failed on a server file%s: %s", _requests(batch), exc)
                for job in batch:
                    job.internal_error = True
                reason += f" {SERVER_FILE}"  # the advice above is theirs, not the client's
            self._fail_all(batch, reason)
            return
        except Exception as exc:  # a bug or a backend failure: this call's jobs fail, the server goes on
            log.error("sdopt serve: generate failed%s:\n%s", _requests(batch), traceback.format_exc())
            self.current = []
            for job in batch:
                job.internal_error = True
            reason = f"generation failed ({type(exc).__name__}: {exc})"
            self._failed_call(reason)
            self._fail_all(batch, reason)
            return
        # Not in a finally: a BaseException leaves self.current for _run, which fails those jobs.
        self.current = []
        if result is None:
            return
        if result.problems:
            # NaN or black images from a request the checks passed (its guidance is at most 50): the artifact's numbers
            # overflow (an fp16 VAE), which the client cannot change. Was a 422, the client's fault, and never seen by
            # /health however often it came. Only the jobs whose images these are fail: in a shared call one client's
            # broken image failed every job of the call, each told of "image 3", another client's.
            reason = NO_USABLE_IMAGE + "; ".join(result.problems)
            log.error("sdopt serve: %s%s", reason, _requests(batch))
            self._failed_call(reason)
            broken = getattr(result, "broken_images", None) or dict.fromkeys(range(len(result.images)), "")  # a stand-in pipeline's: all
            row = 0
            for job in batch:
                own = {i: why for i, why in broken.items() if row <= i < row + job.spec.n}
                if own:
                    job.internal_error = True
                    lines = problem_lines(own, first=row) if all(own.values()) else result.problems
                    self._finish(job, J.FAILED, NO_USABLE_IMAGE + "; ".join(lines))
                else:
                    self._succeed(job, batch, result, row)
                row += job.spec.n
            return
        self.failing_calls = 0  # a call that ran: whatever failed before has passed
        for seconds in result.timings.unet_steps:
            self.metrics.observe_step(seconds)
        row = 0
        for job in batch:
            self._succeed(job, batch, result, row)
            row += job.spec.n

    def _succeed(self, job: J.Job, batch: list[J.Job], result: Any, row: int) -> None:
        """``job`` ends with its rows of the call's result, from ``row`` on."""
        images = result.images[row:row + job.spec.n]
        if not job.ended:  # a job cancelled out of the call keeps none of its rows (its latents, a view of the whole call's, stayed for 1,000 jobs)
            job.latents = result.latents[row:row + job.spec.n]
            job.warnings = self._warnings(job, batch, result)
        self._finish(job, J.SUCCEEDED, images=images)

    def _warnings(self, job: J.Job, batch: list[J.Job], result: Any) -> list[str]:
        """The call's warnings that are ``job``'s: all of them when it ran alone; in a shared call, its own request's
        asked again (a warning quotes its prompt: another client's is not this one's to read)."""
        if len(batch) == 1:
            return list(result.warnings)
        notices = getattr(self.pipeline, "notices", None)  # a stand-in pipeline in tests may lack it
        if notices is None:
            return []
        with _in_their_fields([job]):
            return notices(J.generate_request([job.spec]))

    def _expire_running(self, batch: list[J.Job]) -> None:
        now = time.monotonic()
        for job in batch:
            if job.deadline < now:
                self._finish(job, J.TIMED_OUT, f"timed out after {self.job_timeout:g} s")

    def _fail_all(self, batch: list[J.Job], reason: str) -> None:
        for job in batch:
            self._finish(job, J.FAILED, reason)

    def _finish(self, job: J.Job, status: str, error: str | None = None, images: list | None = None, skipped: bool = False) -> bool:
        if not job.finish(status, self.shown(error), images, skipped=skipped):
            return False
        seconds = job.seconds()
        if status == J.SUCCEEDED and seconds is not None:
            self._recent_job_seconds.append(seconds)
        self.metrics.job_finished(status, seconds, len(images or []))
        with self._cond:
            job.drop_inputs()  # under the lock: a call being taken (_take_batch) has read them already
            self._finished_order.append(job.id)
            while len(self._finished_order) > FINISHED_KEPT:
                self.jobs.pop(self._finished_order.popleft(), None)
            if len(self._finished_order) > IMAGES_KEPT:
                old = self.jobs.get(self._finished_order[-IMAGES_KEPT - 1])
                if old is not None:
                    old.latents = None
                    if old.images:
                        old.images, old.images_dropped = [], True
        return True

    # --- the watchdog -----------------------------------------------------------------
    def _watch(self) -> None:
        """Restart a dead worker thread; time out queued jobs even while a long call runs."""
        while not self._stopping:
            time.sleep(0.25)
            with self._cond:
                self._expire_queued()
            if not self._stopping and not self.alive:
                self.metrics.count_restart()
                log.error("sdopt serve: restarting the worker")
                self._start_thread()
