"""A real uvicorn server on a free loopback port, in a thread, for the serve tests' real clients."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from typing import Any, Callable


SMALL = {"width": 64, "height": 64, "steps": 4}  # a serve request's size and steps: the tiny model's own size


def png(b64: str):
    """A base64 PNG from a response -> a PIL image (its text chunks in .info)."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png_bytes(image) -> bytes:
    """A PIL image -> a PNG file's bytes (what a multipart upload carries)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64png(image) -> str:
    """A PIL image -> the base64 PNG a JSON request carries."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(pipeline: Any, name: str = "tiny", start_worker: bool = True, replica: str | None = None, **settings: Any):
    """Yields (base_url, app). The worker starts unless start_worker=False (tests that fill the queue first); replica: the
    app as a Ray Serve replica of that name builds it (sdopt.cluster.serve), without Ray."""
    import uvicorn

    from sdopt.serve.server import build
    from sdopt.serve.settings import ServeSettings

    port = free_port()
    app = build(pipeline, ServeSettings(port=port, **settings), name, start_worker=start_worker, replica=replica)
    worker = app.state.worker
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start within 20 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        worker.stop()
        thread.join(10)


def run_queued(pipeline: Any, specs: list, max_batch: int = 4) -> list:
    """The jobs of ``specs``, all queued before a worker starts (so it batches what can share a call), run to the end."""
    from sdopt.serve import jobs as J
    from sdopt.serve.worker import Worker

    worker = Worker(pipeline, max_batch=max_batch)
    jobs = [worker.submit(J.Job(spec=spec)) for spec in specs]
    worker.start()
    try:
        for job in jobs:
            job.future.result(timeout=120)
    finally:
        worker.stop()
    return jobs


class SlowSteps:
    """A pipeline whose every denoising step also sleeps: cancel and timeout tests need a job that is
    still running when the client acts, whatever the machine's speed. Everything else is the real pipeline."""

    def __init__(self, pipeline: Any, seconds: float):
        self.pipeline, self.seconds = pipeline, seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)

    def generate(self, request, progress: Callable | None = None, **kwargs):
        def slow(*args, **kw):
            time.sleep(self.seconds)
            if progress:
                progress(*args, **kw)

        return self.pipeline.generate(request, progress=slow, **kwargs)


class Crash(BaseException):
    """Not an Exception: escapes the worker's per-call handler and kills its thread, as a real crash would."""


class Faulty:
    """The real pipeline, except that the prompt 'fail' raises an error and the prompt 'crash' kills the thread."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)

    def generate(self, request, **kwargs):
        if "fail" in request.prompts:
            raise RuntimeError("the backend fell over")
        if "crash" in request.prompts:
            raise Crash("the worker thread died")
        return self.pipeline.generate(request, **kwargs)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")
