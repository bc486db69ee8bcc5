#!/usr/bin/env bash
# The demo on the embedded tiny model: build it, run it, leave the results in reports/demo/.
set -euo pipefail
MODEL=models/tiny
OUT=reports/demo
PROMPT="a watercolor painting of a lighthouse at dawn"

rm -rf "$MODEL" "$OUT"
mkdir -p "$OUT/images"
echo "== init the tiny synthetic model"
sdopt init-model tiny "$MODEL" --seed 0
sdopt inspect "$MODEL"

echo "== generate with PyTorch fp32"
sdopt generate "$MODEL" --prompt "$PROMPT" --seed 42 --steps 8 --height 128 --width 128 \
    --num-images 2 -o "$OUT/images/torch-fp32.png"
echo "== generate with PyTorch bf16"
sdopt generate "$MODEL" --prompt "$PROMPT" --seed 42 --steps 8 --height 128 --width 128 \
    --precision bf16 -o "$OUT/images/torch-bf16.png"

echo
echo "demo finished: images in $OUT/images/"
