#!/usr/bin/env bash
# Every GPU check in one go, for a CUDA machine with a stock PyTorch image (torch with CUDA,
# onnx, onnxruntime, transformers, safetensors present; diffusers and sdopt's other small
# pure-Python wheels carried; sdopt run from the source tree, without its CPU torch pin).
#
#   bash scripts/gpu_check.sh [--dry-run] [OUT]    # OUT defaults to $OUT, else /tmp/gpu-check
#
# --dry-run prints every command it would run and runs none (the test suite runs it so). Without it, where python3's
# torch sees no CUDA GPU (DEVICE=cuda, the default), it stops before making anything (exit status 2).
#
# Most important first, since a GPU lease is short (BUDGET_SECONDS for all of it):
# 1. machine: GPU, driver, library versions;
# 2. sd15 at 512x512, batch 1, 20 steps on the cuda-h100 profile: torch fp16 (reference), fp16
#    with CUDA graphs (inductor's reduce-overhead), torchao int8 with fp16 activations and fp8
#    with bf16, the same two computing in fp32, bf16, fp16 with torch.compile alone (inductor's
#    default mode) — in that order, each artifact in its own
#    worker (so the CUDA allocator peak and the fp16 matmul probe are exercised); on an H200
#    each took ~40 s (load ~25 s of it, mostly imports), a compiled one ~100 s, when every worker
#    started cold; workers are now forked from a server that imported torch once (the bench's
#    fork server; its first run on a GPU: a report warning says if it fell back to cold starts);
#    at SD15_SECONDS the bench stops and reports what finished (reports/cuda-h200/README.md);
# 3. the tiny model: `sdopt bench` on CUDA for a few artifacts against fp32, then every CUDA
#    row of the quantization capability table quantized, loaded and run against fp32 on CUDA
#    (measure/cuda_roundtrip.py), if ROUNDTRIP_MIN_SECONDS are left;
# 4. TensorRT, where installed: the sd15 export to static fp16 engines at 512x512 (and, with
#    nvidia-modelopt too, int8 engines), benched against torch fp16.
# Everything lands in OUT as log.txt, rows.txt and reports.tgz (the report folders).
# SDOPT_GIT_COMMIT=<commit> names the commit in the reports: the lent machine's copy of .git may be stale.
set -u
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-${OUT:-/tmp/gpu-check}}
WORK=${WORK:-/tmp/gpu-work}
DEVICE=${DEVICE:-cuda}
BUDGET_SECONDS=${BUDGET_SECONDS:-420}
SD15_SECONDS=${SD15_SECONDS:-300}  # the sd15 bench's own limit: at it the bench stops and reports the artifacts that finished
ARTIFACT_SECONDS=${ARTIFACT_SECONDS:-150}  # one sd15 artifact, torch.compile's compilation included
ROUNDTRIP_MIN_SECONDS=${ROUNDTRIP_MIN_SECONDS:-90}
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SDOPT="python3 -m sdopt.cli"

step() { echo "== $((SECONDS - START))s $*"; }
# Each command is printed, then run unless --dry-run; its exit status is printed after it.
run() {
    echo "+ $*"
    [ "$DRY" = 1 ] && return 0
    bash -c "$*"
    echo "rc=$?"
}
pack() { [ "$DRY" = 1 ] || tar czf "$OUT/reports.tgz" -C "$OUT" $(cd "$OUT" && ls -d tiny sd15 sd15-trt 2>/dev/null) 2>/dev/null || true; }
left() { echo $((BUDGET_SECONDS - (SECONDS - START))); }
have() { [ "$DRY" = 1 ] && return 0; python3 -c "import $1" 2>/dev/null; }

# Before anything is made or written: without a CUDA GPU every step below would fail, after minutes of building sd15.
if [ "$DRY" = 0 ] && [[ $DEVICE == cuda* ]] && ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check.sh: python3 here has no torch that sees a CUDA GPU (the CUDA build of torch, README): run it on the GPU machine (--dry-run lists the checks)" >&2
    exit 2
fi
if [ "$DRY" = 0 ]; then
    mkdir -p "$OUT" "$WORK/q" "$WORK/tq"
    exec > >(tee -a "$OUT/log.txt") 2>&1
else
    echo "dry run: nothing below is executed (OUT=$OUT WORK=$WORK DEVICE=$DEVICE)"
fi

step "machine"
run "nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || echo no nvidia-smi"
run "python3 -c \"import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))\""
run "nproc; python3 -c \"import importlib.metadata as m; print(*[f'{p} {m.version(p)}' for p in ('diffusers','transformers','torchao','optimum-quanto','bitsandbytes','onnxruntime')])\""

step "sd15, 512x512, 20 steps, on the cuda-h100 profile: torch fp16 (reference), CUDA graphs, int8/fp8 in half precision and in fp32, bf16, inductor alone"
run "$SDOPT init-model sd15 $WORK/sd15 >/dev/null"
run "timeout -k 60 $SD15_SECONDS $SDOPT bench --profile cuda-h100 --build-from $WORK/sd15 --work $WORK/sd15-art \
-o $OUT/sd15 --only torch-fp16-cudagraphs,torch-int8-fp16,torch-fp8-bf16,torch-int8,torch-fp8,torch-bf16,torch-fp16-compile --steps 20 --height 512 --width 512 --seeds 0 --warmup 2 --runs 3 --timeout $ARTIFACT_SECONDS"
pack

step "bench on $DEVICE: a few tiny artifacts against torch fp32 (a worker process each; $(left) s left)"
run "$SDOPT init-model tiny $WORK/tiny --seed 0 >/dev/null"
run "$SDOPT quantize $WORK/tiny --scheme nf4 --backend bnb --device $DEVICE -o $WORK/tq/bnb-nf4 >/dev/null"
run "$SDOPT quantize $WORK/tiny --scheme int8 --backend torchao --device $DEVICE -o $WORK/tq/torchao-int8 >/dev/null"
run "timeout 120 $SDOPT bench $WORK/tiny@fp16 $WORK/tq/bnb-nf4 $WORK/tq/torchao-int8 --reference $WORK/tiny --device $DEVICE \
--steps 4 --height 128 --width 128 --seeds 0 --warmup 1 --runs 2 -q -o $OUT/tiny"
pack

left=$(left)
if [ "$DRY" = 1 ] || [ $left -ge "$ROUNDTRIP_MIN_SECONDS" ]; then
    step "the tiny model: every $DEVICE row of the capability table, quantized, loaded and run ($left s left)"
    run "timeout $((left > 30 ? left - 10 : 20)) python3 measure/cuda_roundtrip.py $WORK/tiny $WORK/q --device $DEVICE | tee $OUT/rows.txt"
else
    step "capability-table roundtrip skipped ($left s left)"
fi

if have tensorrt; then
    step "TensorRT: sd15 to static fp16 engines at 512x512, benched against torch fp16"
    run "$SDOPT export $WORK/sd15 --to tensorrt --precision fp16 --static --height 512 --width 512 --batch-range 1:1 -o $WORK/sd15-trt"
    trt=("$WORK/sd15-trt")
    if have modelopt; then  # the UNet in int8 (ModelOpt's Q/DQ, calibrated on the GPU), the rest fp16
        run "$SDOPT export $WORK/sd15 --to tensorrt --precision int8 --static --height 512 --width 512 --batch-range 1:1 -o $WORK/sd15-trt-int8"
        trt+=("$WORK/sd15-trt-int8")
    fi
    run "$SDOPT bench $WORK/sd15@fp16 ${trt[*]} --reference $WORK/sd15@fp16 --device cuda --steps 20 --height 512 --width 512 \
--seeds 0 --runs 3 -q -o $OUT/sd15-trt"
    pack
else
    step "TensorRT not installed here: its rows are not measured"
fi
step "done"
