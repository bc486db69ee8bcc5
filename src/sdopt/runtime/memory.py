"""Peak memory of the process during a block of work.

On Linux, writing "5" to /proc/self/clear_refs resets the resident-set
high-water mark (VmHWM), so each generate call reports its own peak rather
than the largest since the process started. Elsewhere the lifetime peak from
getrusage is the best available, and is labelled as such by being no lower.
Windows has neither (no /proc, no ``resource`` module): the peak is not
measured there, said once per process, and reads 0 (rss_peak_measured says
which, so that a report can record no figure rather than 0 bytes).
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

_PROC_STATUS = "/proc/self/status"


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int:
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource  # POSIX only: imported here, so that generate runs where it is missing (Windows)
    except ImportError:
        _say_unmeasured()
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def rss_peak_measured() -> bool:
    """Whether rss_peak_bytes measures anything on this platform (not on Windows: no /proc, no resource module)."""
    if os.path.exists(_PROC_STATUS):
        return True
    try:
        import resource  # noqa: F401
    except ImportError:
        return False
    return True


_said_unmeasured = False


def _say_unmeasured() -> None:
    global _said_unmeasured
    if not _said_unmeasured:
        _said_unmeasured = True
        warnings.warn("peak memory is not measured on this platform (no /proc/self/status, no getrusage): "
                      "memory figures read 0", UserWarning, stacklevel=3)


@contextmanager
def track_peak(cuda: bool = False) -> Iterator[dict[str, int]]:
    """Yield a dict that holds the peaks ("rss", and "cuda_allocated" when cuda) after the block."""
    peaks: dict[str, int] = {}
    _reset_rss_peak()
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield peaks
    finally:
        peaks["rss"] = rss_peak_bytes()
        if cuda:
            import torch

            torch.cuda.synchronize()
            peaks["cuda_allocated"] = int(torch.cuda.max_memory_allocated())
