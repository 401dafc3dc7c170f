#!/usr/bin/env bash
# Userland instructions per delivery of one gateway under callgrind: steady whatever else the
# machine does (instructions, not seconds), so before/after comparisons of the hot path hold.
# One gateway (single-threaded runtime) on its own redis-server, 1,000 users x 1 connection,
# `gleepost-loadgen fanout` at 2,000 events/s; instrumentation on for 4 s in the middle; the
# instruction count divided by the deliveries in that window.
# Usage: scripts/instructions-per-delivery.sh [gateway-binary] [redis|redis-history]
# Needs valgrind, curl, redis-server and a release build (`make build`).
set -euo pipefail
cd "$(dirname "$0")/.."
GW=${1:-target/release/gleepost-gateway}
MODE=${2:-redis}
LOADGEN=${LOADGEN:-target/release/gleepost-loadgen}
export GATEWAY_JWT_SECRET=ir-secret-0123456789abcdef0123456789 GATEWAY_API_KEY=ir-key
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(fp); P=$(fp); A=$(fp)
OUT=$(mktemp -d)/callgrind.out
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$(dirname "$OUT")"; }
trap cleanup EXIT
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
pids+=($!)
sleep 0.3
REDIS_URL=redis://127.0.0.1:$RP valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
  "$GW" --listen 127.0.0.1:"$P" --admin-listen 127.0.0.1:"$A" --log warn --worker-threads 1 2>/dev/null &
GPID=$!
pids+=($GPID)
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 1; done
"$LOADGEN" fanout -n 1000 -u 1000 --url "ws://127.0.0.1:$P/ws" --publish "$MODE" \
  --redis-url "redis://127.0.0.1:$RP" --rate 2000 --warmup 10s --duration 20s --max-seconds 90 >/dev/null 2>&1 &
pids+=($!)
sleep 18
delivered() { curl -s "http://127.0.0.1:$A/metrics" | awk '/^gleepost_gateway_events_delivered_total /{print $2}'; }
D0=$(delivered)
callgrind_control -i on "$GPID" >/dev/null
sleep 4
callgrind_control -i off "$GPID" >/dev/null
D1=$(delivered)
callgrind_control -d "$GPID" >/dev/null
sleep 2
IR=$(cat "$OUT"* | awk '/^totals:/{s+=$2} END {print s}')
python3 -c "d=$D1-$D0; print(f'$(basename "$GW") $MODE: {$IR:,} Ir over {d:,.0f} deliveries = {$IR/d:,.0f} Ir/delivery')"
