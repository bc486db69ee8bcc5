"""Other processes' share of a bench worker's CPUs, from the kernel's counters (sdopt.bench.contention)."""

import os
import types

import pytest

from sdopt.bench import contention

# Two CPUs' lines of /proc/stat: user nice system idle iowait irq softirq steal guest guest_nice
_STAT = "cpu  {t}\ncpu0 {a}\ncpu1 {b}\ncpu2 {c}\nintr 1 2 3\nctxt 9\n"


def _stat(tmp_path, monkeypatch, cpu0, cpu1, cpu2="0 0 0 0 0 0 0 0 0 0"):
    path = tmp_path / "stat"
    path.write_text(_STAT.format(t="0 " * 10, a=cpu0, b=cpu1, c=cpu2))
    monkeypatch.setattr(contention, "_PROC_STAT", str(path))
    return path


def test_others_share_is_the_busy_time_of_this_process_cpus_less_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: 100)  # ticks per second
    monkeypatch.setattr(contention, "_allowed_cpus", lambda: {0, 1})  # cpu2 is not ours: never counted
    clock = iter([10.0, 12.0])
    monkeypatch.setattr(contention.time, "perf_counter", lambda: next(clock))
    own = iter([types.SimpleNamespace(user=5.0, system=1.0), types.SimpleNamespace(user=6.5, system=1.5)])
    monkeypatch.setattr(os, "times", lambda: next(own))
    _stat(tmp_path, monkeypatch, "100 0 0 900 0 0 0 0 0 0", "100 0 0 900 0 0 0 0 0 0", "5000 0 0 0 0 0 0 0 0 0")
    start = contention.sample()
    # 2 s on two CPUs: 400 ticks. cpu0 busy 150 (user 100, irq 20, steal 30), cpu1 busy 150 (system 100, guest 50 is
    # inside user already; iowait 40 is idle) = 3.0 s busy, of which 2.0 s this process's own: others 1.0 s of 4.0.
    _stat(tmp_path, monkeypatch, "200 0 0 1000 0 20 0 30 0 0", "150 0 100 900 40 0 0 0 50 0", "9000 0 0 0 0 0 0 0 0 0")
    end = contention.sample()
    assert (start.cpus, end.busy_s - start.busy_s, end.own_s - start.own_s) == (2, 3.0, 2.0)
    assert contention.others_share(start, end) == pytest.approx(0.25)


def test_no_share_without_counters_or_over_a_span_too_short(tmp_path, monkeypatch):
    monkeypatch.setattr(contention, "_PROC_STAT", str(tmp_path / "absent"))  # macOS, Windows
    assert contention.sample() is None and contention.others_share(None, None) is None
    a = contention.CpuSample(wall_s=0.0, busy_s=1.0, own_s=0.0, cpus=2)
    assert contention.others_share(a, contention.CpuSample(0.05, 1.1, 0.0, 2)) is None  # 50 ms: a few ticks
    assert contention.others_share(a, contention.CpuSample(1.0, 9.0, 0.0, 2)) == 1.0  # clamped
    assert contention.others_share(a, contention.CpuSample(1.0, 1.0, 0.5, 2)) == 0.0  # own time counted late: not negative


def test_the_share_on_this_machine_is_a_fraction(monkeypatch):
    """The real counters (Linux): a share between 0 and 1 over a short busy span of this process."""
    start = contention.sample()
    if start is None:
        pytest.skip("no /proc/stat here")
    while contention.sample().wall_s - start.wall_s < 0.3:
        pass
    share = contention.others_share(start, contention.sample())
    assert share is not None and 0.0 <= share <= 1.0
