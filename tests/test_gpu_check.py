"""scripts/gpu_check.sh, the one prepared GPU check: its dry run (what a GPU machine would run) on any machine."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_lists_every_check_and_runs_none(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "WORK": str(work)}, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert any("measure/cuda_roundtrip.py" in c and "--device cuda" in c for c in commands)
    assert any(" bench " in c and "--profile cuda-h100" in c and "--steps 20 --height 512 --width 512" in c
               and "torch-fp16-cudagraphs,torch-int8-fp16,torch-fp8-bf16,torch-int8,torch-fp8" in c and "timeout -k" in c for c in commands)
    assert any("--to tensorrt" in c and "--precision fp16 --static" in c for c in commands)
    assert any("--to tensorrt" in c and "--precision int8 --static" in c for c in commands)
    assert any(" bench " in c and "sd15-trt sd15-trt-int8" in c.replace(str(work) + "/", "") for c in commands)
    assert done.stdout.rstrip().endswith("done")
    assert not out.exists() and not work.exists()  # nothing was run


def test_without_a_cuda_gpu_it_stops_before_making_anything(tmp_path):
    """Run for real where python3 finds no CUDA GPU (a stand-in python3 that fails, as torch.cuda.is_available() would):
    it went on to write sd15 (minutes, 4 GB) and every step failed after it."""
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": f"{stub.parent}:/usr/bin:/bin", "WORK": str(work)}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == ["gpu_check.sh: python3 here has no torch that sees a CUDA GPU (the CUDA build of torch, "
                                                "README): run it on the GPU machine (--dry-run lists the checks)"]
    assert not out.exists() and not work.exists()


def test_script_parses():
    assert subprocess.run(["bash", "-n", "scripts/gpu_check.sh"], cwd=ROOT).returncode == 0
