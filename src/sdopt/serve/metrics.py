"""Prometheus text exposition for the server's counters, gauges and histograms.

Written out by hand (the format is a few lines of text) so the serve extra
needs no client library; names follow Prometheus' conventions (units in the
name, ``_total`` for counters, ``_seconds`` for durations).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

# Buckets: a tiny model's step takes milliseconds, an SD 1.5 job on a CPU minutes.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]):
        self._lock = threading.Lock()
        self._queue_depth, self._running = queue_depth, running
        self.jobs = defaultdict(int)  # outcome -> count
        self.rejected = 0  # 429: queue full
        self.images = 0
        self.worker_restarts = 0
        self.step = Histogram(STEP_BUCKETS)
        self.job = Histogram(JOB_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)

    def job_finished(self, outcome: str, seconds: float | None, images: int) -> None:
        with self._lock:
            self.jobs[outcome] += 1
            self.images += images
            if seconds is not None:
                self.job.observe(seconds)

    def observe_step(self, seconds: float) -> None:
        with self._lock:
            self.step.observe(seconds)

    def observe_batch(self, images: int) -> None:
        with self._lock:
            self.batch.observe(images)

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def count_restart(self) -> None:
        with self._lock:
            self.worker_restarts += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP sdopt_queue_depth Jobs waiting for the worker.",
                "# TYPE sdopt_queue_depth gauge",
                f"sdopt_queue_depth {self._queue_depth()}",
                "# HELP sdopt_jobs_running Jobs in the generate call now running.",
                "# TYPE sdopt_jobs_running gauge",
                f"sdopt_jobs_running {self._running()}",
                "# HELP sdopt_jobs_total Finished jobs by outcome.",
                "# TYPE sdopt_jobs_total counter",
            ]
            for outcome in sorted(set(self.jobs) | {"succeeded", "failed", "cancelled", "timed_out"}):
                lines.append(f'sdopt_jobs_total{{outcome="{outcome}"}} {self.jobs[outcome]}')
            lines += [
                "# HELP sdopt_jobs_rejected_total Requests refused with 429 because the queue was full.",
                "# TYPE sdopt_jobs_rejected_total counter",
                f"sdopt_jobs_rejected_total {self.rejected}",
                "# HELP sdopt_images_generated_total Images returned to clients.",
                "# TYPE sdopt_images_generated_total counter",
                f"sdopt_images_generated_total {self.images}",
                "# HELP sdopt_worker_restarts_total Times the worker thread died and was restarted.",
                "# TYPE sdopt_worker_restarts_total counter",
                f"sdopt_worker_restarts_total {self.worker_restarts}",
                "# HELP sdopt_step_seconds UNet time of one denoising step of a generate call (all its images).",
                "# TYPE sdopt_step_seconds histogram",
                *self.step.lines("sdopt_step_seconds"),
                "# HELP sdopt_job_seconds Submission to finish, per job.",
                "# TYPE sdopt_job_seconds histogram",
                *self.job.lines("sdopt_job_seconds"),
                "# HELP sdopt_batch_images Images per generate call.",
                "# TYPE sdopt_batch_images histogram",
                *self.batch.lines("sdopt_batch_images"),
            ]
        return "\n".join(lines) + "\n"
