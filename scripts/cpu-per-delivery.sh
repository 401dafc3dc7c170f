#!/usr/bin/env bash
# Gateway CPU per delivery at a fixed rate (less noisy than max-rate's step search):
# 2 gateway nodes on core 0, Redis + load generator on core 1, raw PUBLISH (history off) or
# the history script, each event to a user with one connection on each node.
# Usage: scripts/cpu-per-delivery.sh [gateway-binary] [events/s] [redis|redis-history] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
GW=${1:-target/release/gleepost-gateway}
RATE=${2:-40000}
MODE=${3:-redis}
RUNS=${4:-3}
LOADGEN=target/release/gleepost-loadgen
export GATEWAY_JWT_SECRET=cpu-per-delivery-secret-0123456789abcdef GATEWAY_API_KEY=cpd-key
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for run in $(seq 1 "$RUNS"); do
  RP=$(free_port)
  taskset -c 1 redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
  pids+=($!)
  sleep 0.3
  urls=(); gpids=()
  for n in 1 2; do
    P=$(free_port); A=$(free_port)
    REDIS_URL=redis://127.0.0.1:$RP taskset -c 0 "$GW" --listen 127.0.0.1:$P --admin-listen 127.0.0.1:$A \
      --log warn --pre-drain-delay 0s --drain-window 0s 2>/dev/null &
    pids+=($!); gpids+=(--server-pid $!); urls+=(--url ws://127.0.0.1:$P/ws)
  done
  sleep 1
  taskset -c 1 "$LOADGEN" fanout -n 2000 -u 1000 "${urls[@]}" --publish "$MODE" \
    --redis-url redis://127.0.0.1:$RP --rate "$RATE" --warmup 2s --duration 8s "${gpids[@]}" \
    --max-seconds 60 --json /tmp/cpd-$run.json >/dev/null 2>&1
  python3 - "$run" <<'PY'
import json, sys
r = json.load(open(f"/tmp/cpd-{sys.argv[1]}.json"))
d = r["delivered_per_sec"]; cpu = r["cpu"]["server_cpu_percent"]
print(f"run {sys.argv[1]}: {d:,.0f} deliveries/s, gateways {cpu:.1f} % of core 0, "
      f"{cpu * 1e4 / d:.2f} us CPU per delivery, p99 {r['latency_us']['p99']/1000:.2f} ms, lost {r['lost']}")
PY
  cleanup; pids=()
done
