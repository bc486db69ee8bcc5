"""Peak memory of the process during a block of work.

On Linux, writing "5" to /proc/self/clear_refs resets the resident-set
high-water mark (VmHWM), so each generate call reports its own peak rather
than the largest since the process started. Elsewhere the lifetime peak from
getrusage is the best available, and is labelled as such by being no lower.
"""

from __future__ import annotations

import resource
import sys
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


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
