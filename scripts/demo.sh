#!/usr/bin/env bash
# The demo on the embedded tiny model: build it, export and quantize it, run every artifact,
# bench them all against PyTorch fp32, and leave images and the report in reports/demo/.
set -euo pipefail
MODEL=models/tiny
OUT=reports/demo
PROMPT="a watercolor painting of a lighthouse at dawn"
GEN=(--prompt "$PROMPT" --seed 42 --steps 8 --height 128 --width 128 --scheduler euler -q)

rm -rf models/tiny models/tiny-onnx models/tiny-openvino models/tiny-int8 "$OUT"
mkdir -p "$OUT/images"

echo "== 1. init the tiny synthetic model (SD-1 architecture, random weights)"
sdopt init-model tiny "$MODEL" --seed 0
sdopt inspect "$MODEL"

echo "== 2. generate with PyTorch fp32 and bf16"
sdopt generate "$MODEL" "${GEN[@]}" --num-images 2 -o "$OUT/images/torch-fp32.png"
sdopt generate "$MODEL" "${GEN[@]}" --precision bf16 -o "$OUT/images/torch-bf16.png"

echo "== 3. export to ONNX and generate with ONNX Runtime"
sdopt export "$MODEL" --to onnx -o models/tiny-onnx
sdopt generate models/tiny-onnx "${GEN[@]}" -o "$OUT/images/onnx-fp32.png"

echo "== 4. export to OpenVINO and generate with it"
sdopt export "$MODEL" --to openvino -o models/tiny-openvino
sdopt generate models/tiny-openvino "${GEN[@]}" -o "$OUT/images/openvino-fp32.png"

echo "== 5. quantize the weights to int8 (backend chosen from the capability table) and generate"
sdopt quantize "$MODEL" --scheme int8 -o models/tiny-int8
sdopt generate models/tiny-int8 "${GEN[@]}" -o "$OUT/images/torch-int8.png"

echo "== 6. bench every artifact against PyTorch fp32 on the same prompts and seeds"
sdopt bench "$MODEL@bf16" models/tiny-onnx models/tiny-openvino models/tiny-int8 --reference "$MODEL" \
    --steps 8 --height 128 --width 128 --seeds 0,1 --warmup 1 --runs 2 -o "$OUT"

echo
echo "demo finished: images in $OUT/images/, report in $OUT/ (report.md, results.csv, report.json)"
echo "open $(cd "$OUT" && pwd)/report.html in a browser"
