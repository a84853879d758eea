#!/usr/bin/env bash
# Instructions the gateway executes per request, counted by valgrind's callgrind: repeatable where
# wall-clock figures on a shared 2-core machine swing by ±15% from run to run.
#
#   benchmarks/instructions_per_request.sh [REQUESTS] [ENV=VALUE ...]
#   e.g. benchmarks/instructions_per_request.sh 2000 CLEX_METRICS_ENABLED=0
#   REFUSED=1 benchmarks/instructions_per_request.sh 2000   # the refused call: a key no account holds (401)
#   STREAM=1 benchmarks/instructions_per_request.sh 2000    # the admitted call, streamed (SSE)
#   API=responses STREAM=1 benchmarks/instructions_per_request.sh 1000   # another ingress (chat, responses,
#                                                     # messages; TOKENS=N asks the demo upstream for N tokens)
#
# The gateway runs under callgrind with instrumentation off until a warm-up is done; only the
# measured requests are counted (non-streaming, concurrency 8, the demo upstream in its own process).
# With REFUSED=1 every request carries a well-formed key the store does not hold: after the first, each is
# answered 401 by the screen from the raw bytes (what a flood of bad keys costs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${1:-2000}; shift || true
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
WORK=$(mktemp -d)
UP=18501; PORT=18500
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$PY" -m clexproxy demo-upstream --port $UP >"$WORK/up.log" 2>&1 & pids+=($!)
env "$@" CLEX_DEMO_UPSTREAM_URL=http://127.0.0.1:$UP/v1 valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$WORK/callgrind.out.%p" \
  "$PY" -m clexproxy serve --demo --config benchmarks/bench.toml --port $PORT --data-dir "$WORK/data" \
  >"$WORK/gw.log" 2>&1 & gw=$!; pids+=($gw)
for _ in $(seq 1 600); do grep -q '^curl' "$WORK/gw.log" 2>/dev/null && break; sleep 0.2; done
KEY=$(cat "$WORK/data/demo_key")
[ -n "${REFUSED:-}" ] && KEY=clex_$(printf 'x%.0s' $(seq 1 43))
MODE=--no-stream; [ -n "${STREAM:-}" ] && MODE=--stream
load() {
  if [ -n "${API:-}" ]; then
    "$PY" benchmarks/protocol_calls.py --port $PORT --key "$KEY" --api "$API" --requests "$1" \
      ${STREAM:+--stream} ${TOKENS:+--tokens "$TOKENS"}
    return
  fi
  "$PY" benchmarks/load.py --url http://127.0.0.1:$PORT/v1 --key "$KEY" \
    --model meta/llama-3.1-8b-instruct --requests "$1" --concurrency 8 --quiet "$MODE" >/dev/null
}
load 300
callgrind_control -i on $gw >/dev/null 2>&1
load "$N"
callgrind_control -i off $gw >/dev/null 2>&1
callgrind_control -d $gw >/dev/null 2>&1
total=$(cat "$WORK"/callgrind.out.* | awk '/^totals:/ {s += $2} END {print s}')
echo "instructions per ${REFUSED:+refused }${STREAM:+streamed }${API:+$API }request: $((total / N)) ($N requests${*:+, $*})"
