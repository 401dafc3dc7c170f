#!/usr/bin/env bash
# Profile one gateway node under a fixed publish load, for before/after comparisons of the
# publish path (issue 14). Wall-clock rates are noisy on a shared 2-core machine; this counts
# what one event costs instead:
#   perf      sampled profile (kernel + user) of the gateway, `perf report` ready
#   callgrind instruction counts of the gateway (repeatable whatever else the machine does)
#   cpu       the gateway's CPU seconds (user, system) and voluntary context switches per event
#   syscalls  the gateway's system calls per event, by call (perf tracepoints)
#   redis     instruction counts of redis-server (under callgrind) per event and per script call,
#             in situ: the gateway's real calls, batched as the load makes them
# Usage: scripts/profile-publish.sh perf|callgrind|cpu|syscalls|redis [http|http-batch|redis|redis-history] [rate] [seconds]
# Needs release builds: cargo build --release -p gleepost-gateway -p gleepost-loadgen
# Env: GATEWAY_BIN (another gateway build to compare), PROFILE_TAG (prefix of the output folder),
#      LOADGEN_ARGS (more loadgen flags, e.g. --http2), HTTP_CONNECTIONS (publish lanes, default 64;
#      with http-batch fewer lanes make larger batches).
# Output in .bench/profile/[<tag>-]<mode>-<via>/ (perf.data or callgrind.out, loadgen.json, summary.txt).
set -euo pipefail
mode=${1:?perf|callgrind|cpu|syscalls|redis}
via=${2:-http}
rate=${3:-5000}
secs=${4:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.bench/profile/${PROFILE_TAG:+$PROFILE_TAG-}$mode-$via"
rm -rf "$out" && mkdir -p "$out"
gw="${GATEWAY_BIN:-$root/target/release/gleepost-gateway}"  # GATEWAY_BIN: compare another build
lg="$root/target/release/gleepost-loadgen"
[ -x "$gw" ] && [ -x "$lg" ] || { echo "build first: cargo build --release -p gleepost-gateway -p gleepost-loadgen" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); wsport=$(free_port); aport=$(free_port)
export GATEWAY_JWT_SECRET="profile-$RANDOM$RANDOM" GATEWAY_API_KEY="profile-$RANDOM$RANDOM"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
redis_cmd=(redis-server)
[ "$mode" = redis ] && redis_cmd=(valgrind --tool=callgrind --callgrind-out-file="$out/redis.callgrind.out" redis-server)
taskset -c 1 "${redis_cmd[@]}" --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$out" --loglevel warning >"$out/redis.log" 2>&1 &
redispid=$!; pids+=($redispid)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$rport" ping >/dev/null || { echo "redis-server did not start" >&2; exit 1; }
gwargs=(--listen "127.0.0.1:$wsport" --admin-listen "127.0.0.1:$aport" --redis-url "redis://127.0.0.1:$rport")
case "$mode" in
  perf|cpu|syscalls|redis) taskset -c 0 "$gw" "${gwargs[@]}" >"$out/gateway.log" 2>&1 & ;;
  callgrind) taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
      "$gw" "${gwargs[@]}" >"$out/gateway.log" 2>&1 & ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
gwpid=$!; pids+=($gwpid)
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$aport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$aport/readyz" >/dev/null || { echo "gateway not ready; see $out/gateway.log" >&2; exit 1; }
# Warm up (connections, script load), then measure the fixed-rate run only.
lgargs=(fanout -n 200 -u 100 --url "ws://127.0.0.1:$wsport/ws" --publish "$via"
  --admin-url "http://127.0.0.1:$aport" --redis-url "redis://127.0.0.1:$rport" --http-connections "${HTTP_CONNECTIONS:-64}")
read -r -a extra <<<"${LOADGEN_ARGS:-}"
lgargs+=("${extra[@]}")
taskset -c 1 "$lg" "${lgargs[@]}" --rate 500 --duration 2s >/dev/null 2>&1 || true
stat() { awk '{print $14, $15}' "/proc/$gwpid/stat"; }
ctx() { awk '/voluntary_ctxt_switches/ {print $2}' "/proc/$gwpid/status" | head -1; }
[ "$mode" = callgrind ] && callgrind_control -z "$gwpid" >/dev/null
[ "$mode" = redis ] && callgrind_control -z "$redispid" >/dev/null && redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
read -r u0 s0 < <(stat); c0=$(ctx)
if [ "$mode" = perf ]; then
  perf record -F 999 --call-graph dwarf,16384 -p "$gwpid" -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1 &
  perfpid=$!
elif [ "$mode" = syscalls ]; then
  calls=(read readv recvfrom write writev sendto sendmsg epoll_wait epoll_ctl futex accept4 close)
  events_arg=$(printf 'syscalls:sys_enter_%s,' "${calls[@]}")
  perf stat -x, -e "${events_arg%,}" -p "$gwpid" -o "$out/syscalls.csv" -- sleep "$secs" >/dev/null 2>&1 &
  perfpid=$!
fi
taskset -c 1 "$lg" "${lgargs[@]}" --rate "$rate" --duration "${secs}s" --json "$out/loadgen.json" >"$out/loadgen.txt" 2>&1
case "$mode" in perf|syscalls) wait "$perfpid" ;; esac
read -r u1 s1 < <(stat); c1=$(ctx)
[ "$mode" = callgrind ] && callgrind_control -d "$gwpid" >/dev/null
if [ "$mode" = redis ]; then
  callgrind_control -d "$redispid" >/dev/null
  redis-cli -p "$rport" INFO commandstats | tr -d '\r' | grep -E "cmdstat_(evalsha|publish|spublish)" >"$out/commandstats.txt" || true
fi
events=$(python3 -c "import json; print(json.load(open('$out/loadgen.json')).get('published', 0))")
hz=$(getconf CLK_TCK)
python3 - "$u0" "$s0" "$u1" "$s1" "$c0" "$c1" "$events" "$hz" <<'PY' | tee "$out/summary.txt"
import sys
u0, s0, u1, s1, c0, c1, ev, hz = map(float, sys.argv[1:])
ev = max(ev, 1)
print(f"events {ev:.0f}; gateway user {1e6*(u1-u0)/hz/ev:.1f} µs/event, system {1e6*(s1-s0)/hz/ev:.1f} µs/event, "
      f"voluntary context switches {(c1-c0)/ev:.2f}/event")
PY
if [ "$mode" = callgrind ]; then
  # The dump covers the measured loadgen run: its 200 handshakes too (compare modes, e.g. http
  # against redis, to see what the publish path adds per event).
  python3 - "$out" "$events" <<'PY' | tee -a "$out/summary.txt"
import glob, re, sys
out, events = sys.argv[1], max(int(sys.argv[2]), 1)
total = sum(int(m.group(1)) for f in glob.glob(f"{out}/callgrind.out.*")
            for m in [re.search(r"^summary: (\d+)", open(f).read(), re.M)] if m)
print(f"instructions {total:,}; {total / events:,.0f} per event")
PY
fi
if [ "$mode" = redis ]; then
  python3 - "$out" "$events" <<'PY' | tee -a "$out/summary.txt"
import glob, re, sys
out, events = sys.argv[1], max(int(sys.argv[2]), 1)
total = sum(int(m.group(1)) for f in glob.glob(f"{out}/redis.callgrind.out.*")
            for m in [re.search(r"^summary: (\d+)", open(f).read(), re.M)] if m)
# Commands that a script runs count too: calls are the scripts' when there are scripts.
stats = {m.group(1): int(m.group(2)) for line in open(f"{out}/commandstats.txt")
         for m in [re.search(r"cmdstat_(\w+):calls=(\d+)", line)] if m}
calls = stats.get("evalsha") or stats.get("publish", 0) + stats.get("spublish", 0)
print(f"redis instructions {total:,}: {total / events:,.0f} per event (user copy); "
      f"{calls} script/publish calls, {events / max(calls, 1):.1f} events per call, "
      f"{total / max(calls, 1):,.0f} per call (includes the network I/O and pub/sub writes)")
PY
fi
if [ "$mode" = syscalls ]; then
  # perf counted for $secs seconds of the run at $rate events/s.
  awk -F, -v n="$((rate * secs))" '/sys_enter/ {split($3, e, "sys_enter_"); printf "%-12s %6.2f per event\n", e[2], $1 / n}' \
    "$out/syscalls.csv" | tee -a "$out/summary.txt"
fi
echo "output: $out"
