"""One call at a time on a pipeline, and none from inside the running one.

A request's LoRAs are set on the pipeline's shared modules for its whole loop, and OpenVINO's compiled models run one
inference request each: two threads in one pipeline would change each other's. So generate, add_embeddings,
unload_loras and close take one lock. A progress or on_latents callback runs in the thread that holds it, where
waiting for it would wait forever (close() to cancel from a callback hung the caller for good): that is refused with
what to do instead.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from sdopt.errors import SdoptError


class OneCall:
    """``with one_call("close"): ...`` holds the pipeline for one call; ``with one_call.running():`` marks the thread
    inside generate's loop, whose callbacks are refused the lock rather than left waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._running_thread: int | None = None  # the thread inside generate's loop: its callbacks must not wait for the lock

    def __call__(self, what: str) -> threading.Lock:
        """The lock, refused to a progress or on_latents callback of a running call (``what``: the method called)."""
        if self._running_thread == threading.get_ident():
            raise SdoptError(f"{what}() was called from inside this pipeline's running generate (its progress or on_latents "
                             f"callback), which would wait for itself forever: raise an exception in the callback to stop the "
                             f"call, and call {what}() after generate returns")
        return self.lock

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around the loop, under the lock: the callbacks it calls run in this thread."""
        self._running_thread = threading.get_ident()
        try:
            yield
        finally:
            self._running_thread = None
