"""A fingerprint of the machine and software a report was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from sdopt import hardware
from sdopt.hardware import cpu_flags
from sdopt.runtime.versions import library_versions

_LIBRARIES = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt",
              "torchao", "quanto", "bnb", "numpy", "safetensors")
# ISA features that change which kernels run (bf16/int8 paths on CPU).
RECORDED_ISA = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def isa_caps() -> dict[str, str]:
    """The variables that keep the libraries below the CPU's own features, as set (a oneDNN cap by its level): a run
    under them is no run of this CPU. "isa" is already what the oneDNN cap leaves (sdopt.hardware.cpu_flags);
    ATEN_CPU_CAPABILITY moves torch's ATen kernels only. A oneDNN value that caps nothing is left out, or the run counted as another CPU's (another baseline
    file in scripts/ci_bench.sh, speed not compared): one oneDNN ignores (ALL, a misspelling), a level at or above this
    CPU's own (AVX512_CORE_AMX on an EPYC), or DNNL_MAX_CPU_ISA beside ONEDNN_MAX_CPU_ISA, which oneDNN reads first."""
    caps = {"ATEN_CPU_CAPABILITY": aten} if (aten := os.environ.get("ATEN_CPU_CAPABILITY")) else {}
    own = hardware.cpuinfo_flags()
    if (cap := hardware.onednn_isa_cap()) and (not own or own - hardware.cpu_flags()):  # flags unknown: said, as it may cap
        # its level, not the value as typed: oneDNN reads "avx2" and "AVX2" alike, and the gate's cpu_kind (so
        # scripts/ci_bench.sh's baseline file) must not tell them apart
        caps[cap.variable] = cap.level
    return caps


def _cpu() -> dict:
    model = hardware.cpuinfo_field("model name")
    # not Linux: the model as platform names it; the caps below are recorded all the same
    info = {"model": platform.processor() or platform.machine() if model is None else model, "logical_cores": os.cpu_count()}
    flags = cpu_flags()
    if flags:
        info["isa"] = [f for f in RECORDED_ISA if f in flags]
    if caps := isa_caps():
        info["isa_caps"] = caps
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def _gpus() -> list[dict]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, driver, memory = (p.strip() for p in line.split(","))
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def git_commit() -> str | None:
    """The sdopt commit a report was made with: $SDOPT_GIT_COMMIT where set (a copy of the tree whose .git is not
    its own, as on a lent GPU machine: the GPU reports read a stale commit), else git's answer for this source tree; None
    where this file is not tracked by the repository git finds (sdopt installed from a wheel into a project's .venv: that
    project's commit is not sdopt's)."""
    if os.environ.get("SDOPT_GIT_COMMIT"):
        return os.environ["SDOPT_GIT_COMMIT"].strip()
    here = Path(__file__).parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "--", Path(__file__).name], capture_output=True, text=True, timeout=5, cwd=here)
        if tracked.returncode:
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, cwd=here)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def fingerprint() -> dict:
    from sdopt import __version__

    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu(),
        "memory_bytes": mem,
        "gpus": _gpus(),
        "sdopt": __version__,
        "git_commit": git_commit(),
        "libraries": library_versions(*_LIBRARIES),
    }
