#!/usr/bin/env bash
# A small bench of the tiny model, gated against the committed baseline in reports/ci/.
# Run by .ci/run after the tests. Refresh the baseline with: scripts/ci_bench.sh --refresh
set -euo pipefail
WORK=${SDOPT_CI_WORK:-out/ci}
BASELINE=reports/ci/report.json
rm -rf "$WORK"
mkdir -p "$WORK"

sdopt init-model tiny "$WORK/tiny" --seed 0 >/dev/null
sdopt export "$WORK/tiny" --to onnx -o "$WORK/tiny-onnx" >/dev/null
sdopt export "$WORK/tiny" --to openvino -o "$WORK/tiny-openvino" >/dev/null
sdopt quantize "$WORK/tiny" --scheme int8 -o "$WORK/tiny-int8" >/dev/null
artifacts=("$WORK/tiny@bf16" "$WORK/tiny-onnx" "$WORK/tiny-openvino" "$WORK/tiny-int8")

sdopt bench "${artifacts[@]}" --reference "$WORK/tiny" --steps 4 --height 64 --width 64 \
    --seeds 0,1 --warmup 1 --runs 3 -q -o "$WORK/report" >/dev/null

if [[ "${1:-}" == "--refresh" ]]; then
    cp "$WORK/report/report.json" "$BASELINE"
    echo "baseline refreshed: $BASELINE (commit it with a note saying why)"
    exit 0
fi
if [[ -f "$BASELINE" ]]; then
    baseline=(--baseline "$BASELINE")
else
    # No committed baseline yet: the gate still checks absolute floors (quality, failed artifacts),
    # and says so in its first line. Commit one with --refresh to get the regression checks.
    echo "note: $BASELINE is not committed yet; gating on absolute floors only"
    baseline=()
fi
sdopt gate "$WORK/report/report.json" "${baseline[@]}" --rules reports/ci/rules.toml \
    --markdown "$WORK/gate.md" --json "$WORK/gate.json"
