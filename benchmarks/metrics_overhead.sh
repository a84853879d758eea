#!/usr/bin/env bash
# Throughput of the request path with metrics on and off, measured in the same run, interleaved.
#
#   benchmarks/metrics_overhead.sh [ROUNDS] [REQUESTS]
#
# One demo upstream (core 1), two gateways pinned to core 0 (one with CLEX_METRICS_ENABLED=0),
# the load script on core 1; the gateways take turns, so drift on the machine hits both alike.
# Access logs stay on (INFO, to a file) in both: only the metrics differ.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-3}
REQUESTS=${2:-5000}
WORK=$(mktemp -d)
UP=18401; ON=18402; OFF=18403
pids=()
declare -A gateway_pid
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

taskset -c 1 "$PY" -m clexproxy demo-upstream --port $UP >"$WORK/up.log" 2>&1 & pids+=($!)
for variant in on off; do
  port=$ON; enabled=1
  [ "$variant" = off ] && port=$OFF && enabled=0
  CLEX_METRICS_ENABLED=$enabled CLEX_DEMO_UPSTREAM_URL=http://127.0.0.1:$UP/v1 \
    taskset -c 0 "$PY" -m clexproxy serve --demo --config benchmarks/bench.toml --port $port \
    --data-dir "$WORK/$variant" >"$WORK/$variant.log" 2>&1 & pids+=($!)
  gateway_pid[$variant]=$!
done
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system ticks of one process
for _ in $(seq 1 100); do
  [ -s "$WORK/on/demo_key" ] && [ -s "$WORK/off/demo_key" ] && grep -q '^curl' "$WORK/on.log" \
    && grep -q '^curl' "$WORK/off.log" && break
  sleep 0.1
done

run() {  # variant port mode -> "requests/s  gateway-CPU-µs/request"
  local before after rps
  before=$(cpu "${gateway_pid[$1]}")
  rps=$(taskset -c 1 "$PY" benchmarks/load.py --url "http://127.0.0.1:$2/v1" --key "$(cat "$WORK/$1/demo_key")" \
    --model meta/llama-3.1-8b-instruct --requests "$REQUESTS" --concurrency 32 --quiet "$3" --json \
    | "$PY" -c 'import json,sys; d = json.load(sys.stdin); print(d["ok_per_s"] if d["errors"] == 0 else "errors")')
  after=$(cpu "${gateway_pid[$1]}")
  echo "$rps $(( (after - before) * 1000000 / HZ / REQUESTS ))"
}

printf '%-10s %-6s %s\n' mode round "metrics on: req/s cpu-us/req | metrics off: req/s cpu-us/req"
for mode in --no-stream --stream; do
  run on $ON "$mode" >/dev/null; run off $OFF "$mode" >/dev/null  # warm-up
  for r in $(seq 1 "$ROUNDS"); do
    if (( r % 2 )); then  # alternate which goes first, so a drift within a round favours neither
      a=$(run on $ON "$mode"); b=$(run off $OFF "$mode")
    else
      b=$(run off $OFF "$mode"); a=$(run on $ON "$mode")
    fi
    printf '%-10s %-6s %s | %s\n' "${mode#--}" "$r" "$a" "$b"
  done
done
