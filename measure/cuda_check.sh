#!/usr/bin/env bash
# Every CUDA check in one go, for a GPU machine that has torch (CUDA build) but maybe not our libraries.
#
#   bash measure/cuda_check.sh [OUT]        # OUT defaults to $OUT, else /tmp/cuda-check
#
# 1. the tiny model: every CUDA row of the quantization capability table that
#    quantizes torch artifacts is quantized for --device cuda, loaded there and
#    run, with torch fp16 and bf16, against fp32 on CUDA (measure/cuda_roundtrip.py);
# 2. `sdopt bench` on CUDA for a few of them: each artifact reloads in its own
#    worker process, and the report holds PSNR, latency per stage and the CUDA
#    allocator peak;
# 3. if at least SD15_MIN_SECONDS are left of BUDGET_SECONDS, the sd15 zoo
#    model on the cuda-h100 profile, torch artifacts only (no TensorRT or
#    onnxruntime-gpu on that machine).
# Everything lands in OUT as log.txt, rows.txt (each row's status
# and PSNR) and reports.tgz (the report folders), so that it comes back from
# a machine that returns few files. DEVICE=cpu runs the same on the CPU rows
# (a dry run of this script here).
set -u
OUT=${1:-${OUT:-/tmp/cuda-check}}
WORK=${WORK:-/tmp/cuda-work}
DEVICE=${DEVICE:-cuda}
BUDGET_SECONDS=${BUDGET_SECONDS:-420}
SD15_MIN_SECONDS=${SD15_MIN_SECONDS:-200}
START=$SECONDS
mkdir -p "$OUT" "$WORK/q"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SDOPT=(python3 -m sdopt.cli)
step() { echo "== $((SECONDS - START))s $*"; }
pack() { tar czf "$OUT/reports.tgz" -C "$OUT" $(cd "$OUT" && ls -d tiny sd15 2>/dev/null) 2>/dev/null || true; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("diffusers", "transformers", "torchao", "optimum.quanto", "bitsandbytes", "accelerate"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as exc:
        print(m, "MISSING", type(exc).__name__, exc)
EOF

step "init the tiny model"
"${SDOPT[@]}" init-model tiny "$WORK/tiny" --seed 0 >/dev/null || { echo "init-model failed"; exit 1; }

step "quantize, load and generate: every $DEVICE row of the capability table (one process)"
timeout 240 python3 measure/cuda_roundtrip.py "$WORK/tiny" "$WORK/q" --device "$DEVICE" | tee "$OUT/rows.txt"
echo "roundtrip rc=${PIPESTATUS[0]}"

step "bench on $DEVICE: a few artifacts against torch fp32 (a worker process each)"
extra=(); [ "$DEVICE" = cuda ] && extra=("$WORK/tiny@fp16")
timeout 200 "${SDOPT[@]}" bench "${extra[@]}" $(ls -d "$WORK"/q/bnb-nf4 "$WORK"/q/torchao-int8 2>/dev/null) \
    --reference "$WORK/tiny" --device "$DEVICE" --steps 4 --height 128 --width 128 --seeds 0 --warmup 1 --runs 2 -q -o "$OUT/tiny"
echo "bench rc=$?"
pack

left=$((BUDGET_SECONDS - (SECONDS - START)))
if [ "$DEVICE" = cuda ] && [ $left -ge "$SD15_MIN_SECONDS" ]; then
    step "sd15 on the cuda-h100 profile, torch artifacts ($left s left)"
    "${SDOPT[@]}" init-model sd15 "$WORK/sd15" >/dev/null && \
    timeout $((left - 20)) "${SDOPT[@]}" bench --profile cuda-h100 --build-from "$WORK/sd15" --work "$WORK/sd15-art" \
        -o "$OUT/sd15" --only torch-fp16,torch-bf16,torch-int8 --seeds 0 --runs 3
    echo "sd15 rc=$?"
    pack
else
    step "sd15 skipped ($left s left, device $DEVICE)"
fi
step "done"
