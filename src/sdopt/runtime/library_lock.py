"""One lock for what Diffusers and Transformers keep process-wide, so that pipelines load and run side by side in threads.

Two of their habits are not thread-safe, and README promises "load one pipeline per thread to run them side by side":
- Their top-level modules are lazy: a class is imported the first time it is asked for, and two threads asking at once
  get ``ImportError: cannot import name 'PNDMScheduler' from 'diffusers'`` (or an AttributeError, which sdopt read as
  "not in this diffusers version") in one of them. Two ONNX or OpenVINO pipelines' first generate calls looked up
  their schedulers so; two loads, CLIPTokenizer (Diffusers 0.42.1, Transformers 5.25.0, CPython 3.11).
- Building a module with empty weights patches torch process-wide (accelerate's ``init_empty_weights``, Transformers'
  meta-device loading): a torch load in another thread meanwhile failed with "Unsupported device type 'meta'".
Each place sdopt's runtime does either holds LIBRARY_LOCK (re-entrant: a load takes it again to look up its classes):
torch components (a quantized one with its deserializing, which sets new Parameters) and tokenizers load one at a time,
and a LoRA or embedding goes into a torch pipeline's modules, under it (ONNX Runtime sessions and OpenVINO compiles do
not wait on it). A generate call waits on it the first time its scheduler class is looked up, and, on torch, when its
request brings a LoRA file that pipeline has not loaded yet: then for as long as another thread's load of one component
takes. Their progress-bar switches are the process's too: ``without_loading_bars``
turns them off around a load and sets them back.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Any, Callable, TypeVar

LIBRARY_LOCK = threading.RLock()

F = TypeVar("F", bound=Callable[..., Any])


def holding_library_lock(function: F) -> F:
    """``function`` run under LIBRARY_LOCK."""

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with LIBRARY_LOCK:
            return function(*args, **kwargs)

    return locked  # type: ignore[return-value]


def diffusers_attr(name: str) -> Any:
    """Diffusers' top-level ``name`` (a class); AttributeError where this Diffusers version has none. Once looked
    up, the lazy module holds it as a plain attribute, read without the lock."""
    looked_up = vars(sys.modules["diffusers"]).get(name) if "diffusers" in sys.modules else None
    if looked_up is not None:
        return looked_up
    with LIBRARY_LOCK:
        import diffusers

        return getattr(diffusers, name)


@contextlib.contextmanager
def without_loading_bars():
    """Our CLI draws its own progress; a per-tensor or per-shard bar is noise. The switches are the process's, so each
    is set back as it was: a host that embeds sdopt keeps its own Diffusers and Transformers progress bars (they
    stayed off for good after any torch load)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    were_enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (hf_logging, diffusers_logging)]
    for lib, _ in were_enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was_enabled in were_enabled:
            if was_enabled:
                lib.enable_progress_bar()
