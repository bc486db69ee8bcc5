#!/usr/bin/env bash
# Fuzz `sdopt serve`'s own OpenAPI schema with schemathesis: no request may get a 5xx.
#
#   PATH=$PWD/.venv/bin:$PATH bash measure/serve_fuzz.sh [EXAMPLES]   (default 100 per operation)
#
# Serves the tiny zoo model on loopback with small limits (so the generated requests that pass
# validation finish in well under a second; a timeout would be a 504, which this check counts),
# then runs every phase schemathesis has (examples, coverage, fuzzing, stateful) with the
# not_a_server_error check, authenticated with a key. Needs the serve and serve-test extras.
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    ''|*[!0-9]*) [ -z "${1:-}" ] || { echo "serve_fuzz.sh: EXAMPLES must be a number, not '$1' (--help)" >&2; exit 2; } ;;
esac
command -v sdopt >/dev/null || { echo "serve_fuzz.sh: no sdopt on PATH: PATH=\$PWD/.venv/bin:\$PATH bash $0" >&2; exit 2; }
EXAMPLES=${1:-100}
PORT=${PORT:-7871}
WORK=$(mktemp -d)
SERVER=
# `|| true`: under set -e a failing command in the trap ends the script there. The server stopped by SIGTERM exited 130
# (sdopt's "interrupted"; 0 now), and `wait` returning it made every run, a clean one too, exit 130 with $WORK left behind.
trap '[ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; } || true; rm -rf "$WORK"' EXIT
sdopt init-model tiny "$WORK/tiny" >/dev/null
sdopt serve "$WORK/tiny" --port "$PORT" --api-key fuzz --max-pixels 16384 --max-steps 8 --max-images 4 \
    --max-queue 256 --job-timeout 120 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 0.5
done
set +e
schemathesis run "http://127.0.0.1:$PORT/openapi.json" --checks not_a_server_error \
    -H "Authorization: Bearer fuzz" --max-examples "$EXAMPLES" --request-timeout 120 --generation-deterministic
STATUS=$?
set -e
echo "== what the fuzzed requests made the server do (its /metrics):"
curl -s -H "Authorization: Bearer fuzz" "http://127.0.0.1:$PORT/metrics" | grep -E '^sdopt_(jobs_total|images_generated_total|jobs_rejected_total|worker_restarts_total)'

if grep -q "Traceback" "$WORK/server.log"; then
    echo "the server logged a traceback:"; grep -B2 -A20 "Traceback" "$WORK/server.log" | head -60
    STATUS=1
fi
exit $STATUS
