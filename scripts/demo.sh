#!/usr/bin/env bash
# The demo on the embedded shapes model (trained weights shipped with sdopt): install it, export and
# quantize it, run every artifact, bench them all against PyTorch fp32 on the same prompts and seeds,
# with prompt adherence judged, and gate the result. Images and the report land in reports/demo/.
set -euo pipefail
MODEL=models/shapes
OUT=reports/demo
PROMPT="a red circle on the left and a blue square on the right"
GEN=(--prompt "$PROMPT" --seed 0 --steps 20 --height 64 --width 64 --scheduler euler -q)

rm -rf models/shapes models/shapes-onnx models/shapes-openvino models/shapes-int8 models/shapes-int4 "$OUT"
mkdir -p "$OUT/images"

echo "== 1. install the shapes model (SD-1 architecture, trained on sdopt's shapes dataset; nothing downloaded)"
sdopt init-model shapes "$MODEL"
sdopt inspect "$MODEL"

echo "== 2. generate with PyTorch fp32 and bf16: \"$PROMPT\""
sdopt generate "$MODEL" "${GEN[@]}" --num-images 2 -o "$OUT/images/torch-fp32.png"
sdopt generate "$MODEL" "${GEN[@]}" --precision bf16 -o "$OUT/images/torch-bf16.png"

echo "== 3. export to ONNX and generate with ONNX Runtime"
sdopt export "$MODEL" --to onnx -o models/shapes-onnx
sdopt generate models/shapes-onnx "${GEN[@]}" -o "$OUT/images/onnx-fp32.png"

echo "== 4. export to OpenVINO and generate with it"
sdopt export "$MODEL" --to openvino -o models/shapes-openvino
sdopt generate models/shapes-openvino "${GEN[@]}" -o "$OUT/images/openvino-fp32.png"

echo "== 5. quantize the weights to int8 and int4 (backends chosen from the capability table) and generate"
sdopt quantize "$MODEL" --scheme int8 -o models/shapes-int8
sdopt generate models/shapes-int8 "${GEN[@]}" -o "$OUT/images/torch-int8.png"
sdopt quantize "$MODEL" --scheme int4 -o models/shapes-int4
sdopt generate models/shapes-int4 "${GEN[@]}" -o "$OUT/images/torch-int4.png"

echo "== 6. bench every artifact against PyTorch fp32 on 8 held-out prompts: speed, memory, PSNR and prompt adherence"
head -8 prompts/shapes-held-out.txt > "$OUT/prompts.txt"
sdopt bench "$MODEL@bf16" models/shapes-onnx models/shapes-openvino models/shapes-int8 models/shapes-int4 --reference "$MODEL" \
    --prompts "$OUT/prompts.txt" --steps 20 --height 64 --width 64 --seeds 0,1 --warmup 1 --runs 2 -o "$OUT"

echo "== 7. gate the report: every artifact ran, and each draws what it is asked (scripts/demo_rules.toml)"
sdopt gate "$OUT/report.json" --rules scripts/demo_rules.toml

echo
echo "demo finished: images in $OUT/images/, report in $OUT/ (report.md, results.csv, report.json)"
echo "open $(cd "$OUT" && pwd)/report.html in a browser"
