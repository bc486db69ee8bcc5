#!/usr/bin/env bash
# Every GPU check in one go, for a CUDA machine with a stock PyTorch image (torch with CUDA,
# onnx, onnxruntime, transformers, safetensors present; diffusers and sdopt's other small
# pure-Python wheels carried; sdopt run from the source tree, without its CPU torch pin).
#
#   bash scripts/gpu_check.sh [--dry-run] [OUT]    # OUT defaults to $OUT, else /tmp/gpu-check
#
# --dry-run prints every command it would run and runs none (the test suite runs it so).
#
# 1. machine: GPU, driver, library versions;
# 2. the tiny model: every CUDA row of the quantization capability table quantized, loaded and
#    run against fp32 on CUDA (measure/cuda_roundtrip.py), and `sdopt bench` on CUDA for a few
#    (each artifact in its own worker: CUDA allocator peak and fp16 matmul probe exercised);
# 3. sd15 at 512x512, batch 1, 20 steps on the cuda-h100 profile: torch fp16 (reference),
#    bf16, fp16 with torch.compile (max-autotune-no-cudagraphs) and with CUDA graphs
#    (reduce-overhead), torchao int8 and fp8 — if SD15_MIN_SECONDS are left of BUDGET_SECONDS;
# 4. TensorRT, where installed: the sd15 export to static fp16 engines at 512x512, benched
#    against torch fp16.
# Everything lands in OUT as log.txt, rows.txt and reports.tgz (the report folders).
set -u
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-${OUT:-/tmp/gpu-check}}
WORK=${WORK:-/tmp/gpu-work}
DEVICE=${DEVICE:-cuda}
BUDGET_SECONDS=${BUDGET_SECONDS:-420}
SD15_MIN_SECONDS=${SD15_MIN_SECONDS:-200}
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
pack() { [ "$DRY" = 1 ] || tar czf "$OUT/reports.tgz" -C "$OUT" $(cd "$OUT" && ls -d tiny sd15 2>/dev/null) 2>/dev/null || true; }
have() { [ "$DRY" = 1 ] && return 0; python3 -c "import $1" 2>/dev/null; }

if [ "$DRY" = 0 ]; then
    mkdir -p "$OUT" "$WORK/q"
    exec > >(tee -a "$OUT/log.txt") 2>&1
else
    echo "dry run: nothing below is executed (OUT=$OUT WORK=$WORK DEVICE=$DEVICE)"
fi

step "machine"
run "nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || echo no nvidia-smi"
run "python3 -c \"import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))\""

step "the tiny model: every $DEVICE row of the capability table, quantized, loaded and run"
run "$SDOPT init-model tiny $WORK/tiny --seed 0 >/dev/null"
run "timeout 240 python3 measure/cuda_roundtrip.py $WORK/tiny $WORK/q --device $DEVICE | tee $OUT/rows.txt"

step "bench on $DEVICE: a few tiny artifacts against torch fp32 (a worker process each)"
run "timeout 200 $SDOPT bench $WORK/tiny@fp16 $WORK/q/bnb-nf4 $WORK/q/torchao-int8 --reference $WORK/tiny --device $DEVICE \
--steps 4 --height 128 --width 128 --seeds 0 --warmup 1 --runs 2 -q -o $OUT/tiny"
pack

left=$((BUDGET_SECONDS - (SECONDS - START)))
if [ "$DRY" = 1 ] || [ $left -ge "$SD15_MIN_SECONDS" ]; then
    step "sd15, 512x512, 20 steps, on the cuda-h100 profile: torch fp16 (reference), bf16, compiled, CUDA graphs, int8, fp8 ($left s left)"
    run "$SDOPT init-model sd15 $WORK/sd15 >/dev/null"
    run "timeout $((left > 60 ? left - 40 : 20)) $SDOPT bench --profile cuda-h100 --build-from $WORK/sd15 --work $WORK/sd15-art \
-o $OUT/sd15 --only torch-fp16,torch-bf16,torch-fp16-compile,torch-fp16-cudagraphs,torch-int8,torch-fp8 --steps 20 --height 512 --width 512 --seeds 0 --runs 3"
    pack
else
    step "sd15 skipped ($left s left)"
fi

if have tensorrt; then
    step "TensorRT: sd15 to static fp16 engines at 512x512, benched against torch fp16"
    run "$SDOPT export $WORK/sd15 --to tensorrt --precision fp16 --static --height 512 --width 512 --batch-range 1:1 -o $WORK/sd15-trt"
    run "$SDOPT bench $WORK/sd15@fp16 $WORK/sd15-trt --reference $WORK/sd15@fp16 --device cuda --steps 20 --height 512 --width 512 \
--seeds 0 --runs 3 -q -o $OUT/sd15-trt"
    pack
else
    step "TensorRT not installed here: its rows are not measured"
fi
step "done"
