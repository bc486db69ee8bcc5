"""How much of the CPUs a bench worker may run on other work took while the worker was timed.

A row's spread (``assemble.too_noisy``) cannot see a machine that was busy for the whole of one
artifact's timed runs: its samples agree with each other, all slow, and its ratio to the reference
is wrong without a sign. The kernel's per-CPU counters can: the busy time of the CPUs this process
may run on, less this process's own CPU time over the same span, is what other processes (and, in a
VM, the hypervisor's steal) took from it. Linux only (/proc/stat); None elsewhere, and None for a
span too short for the counters' 10 ms ticks to say anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_PROC_STAT = "/proc/stat"
# /proc/stat's per-CPU columns: user nice system idle iowait irq softirq steal guest guest_nice. Busy is
# everything but idle and iowait; guest time is already inside user, so it is not added again.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
_SHORTEST_SPAN_S = 0.2  # below this, a tick or two either way is a large share of the span


@dataclass(frozen=True)
class CpuSample:
    wall_s: float  # time.perf_counter()
    busy_s: float  # busy time of the CPUs this process may run on, since boot
    own_s: float  # this process's CPU time (every thread, user and system)
    cpus: int  # how many CPUs busy_s sums over


def _allowed_cpus() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return None


def sample() -> CpuSample | None:
    """The counters now, or None where the platform has no /proc/stat."""
    cpus = _allowed_cpus()
    try:
        with open(_PROC_STAT) as f:
            lines = f.readlines()
    except OSError:
        return None
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    busy_ticks, counted = 0, 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue  # the "cpu" total line and everything after the per-CPU lines
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        columns = [int(x) for x in rest.split()]
        busy_ticks += sum(columns[i] for i in _BUSY_COLUMNS if i < len(columns))
        counted += 1
    if not counted:
        return None
    times = os.times()
    return CpuSample(time.perf_counter(), busy_ticks / ticks_per_s, times.user + times.system, counted)


def others_share(start: CpuSample | None, end: CpuSample | None) -> float | None:
    """The share (0–1) of this process's CPUs that other work kept busy between two samples, or None
    where it cannot be told (no counters, or a span shorter than a few of their ticks)."""
    if start is None or end is None or end.cpus != start.cpus:
        return None
    span = end.wall_s - start.wall_s
    if span < _SHORTEST_SPAN_S:
        return None
    others = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return min(1.0, max(0.0, others / (span * end.cpus)))
