#!/usr/bin/env bash
# Where a publish-script call's Redis instructions go (issue 14): runs the history publish
# script, and variants of it that each drop or replace one part, against a private
# redis-server under callgrind, and prints instructions per user copy. Instruction counts are
# repeatable whatever else the machine does; seconds are not.
#   current      PUBLISH_SCRIPT from crates/event/src/history.rs, as the gateway sends it
#   empty        a script that returns at once, with the same keys and arguments (the cost of
#                a call: reading the command, building KEYS/ARGV, the reply)
#   commands     only the three commands per user (GET, XADD NOMKSTREAM, PUBLISH), no logic
#   concat       commands + the published payload built with its id, as `current` does
#   reply        commands + the per-user reply table, as `current` returns it
#   list         another history structure for comparison: INCR + RPUSH (+ LTRIM now and
#                then) + PUBLISH per user (not a design the gateway has)
#   native       the three commands without Lua: GET, XADD NOMKSTREAM and PUBLISH each sent
#                alone, 10 per pipeline, summed (what Lua's share is; not atomic, not a design)
# Each call carries USERS users (default 10, about what the batcher sends at real rates), the
# keys of 1,000 users chosen at random; two subscribers read the channel, as two gateway
# nodes would. Usage: scripts/script-cost.sh [variant…]   (default: all)
# Env: USERS (users per call), CALLS (measured calls, default 2000).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
users=${USERS:-10}
calls=${CALLS:-2000}
work=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; pkill -f "redis-cli -p $port" || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

python3 - "$root/crates/event/src/history.rs" >"$work/current.lua" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
print(re.search(r'pub const PUBLISH_SCRIPT: &str = r#"(.*?)"#;', src, re.S).group(1))
EOF
echo 'return 1' >"$work/empty.lua"
cat >"$work/commands.lua" <<'EOF'
local a = 5 + tonumber(ARGV[5])
for i = 1, #KEYS, 2 do
  redis.call('GET', KEYS[i + 1])
  redis.call('XADD', KEYS[i], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[6])
  redis.call('PUBLISH', ARGV[a + 1], ARGV[6])
  a = a + 3
end
return 1
EOF
cat >"$work/concat.lua" <<'EOF'
local a = 5 + tonumber(ARGV[5])
local body = string.sub(ARGV[6], 1, -2)
for i = 1, #KEYS, 2 do
  local epoch = redis.call('GET', KEYS[i + 1])
  local sid = redis.call('XADD', KEYS[i], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[6])
  redis.call('PUBLISH', ARGV[a + 1], body .. ',"id":"' .. epoch .. '-' .. sid .. '"}')
  a = a + 3
end
return 1
EOF
cat >"$work/reply.lua" <<'EOF'
local a = 5 + tonumber(ARGV[5])
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('GET', KEYS[i + 1])
  out[#out + 1] = redis.call('XADD', KEYS[i], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[6])
  out[#out + 1] = redis.call('PUBLISH', ARGV[a + 1], ARGV[6])
  a = a + 3
end
return out
EOF
cat >"$work/list.lua" <<'EOF'
local maxlen, ttl = tonumber(ARGV[1]), ARGV[2]
local count = tonumber(ARGV[5])
local bodies = {}
for j = 1, count do bodies[j] = string.sub(ARGV[5 + j], 1, -2) end
local out = {}
local a = 5 + count
for i = 1, #KEYS, 2 do
  local list, ckey = 'l' .. KEYS[i], 'n' .. KEYS[i + 1]
  local j = tonumber(ARGV[a + 2])
  local n = redis.call('INCR', ckey)
  if n == 1 then redis.call('PEXPIRE', ckey, ttl) end
  local len = redis.call('RPUSH', list, ARGV[5 + j])
  if len > maxlen + 100 then redis.call('LTRIM', list, -maxlen, -1) end
  if n == 1 then redis.call('PEXPIRE', list, ttl) end
  out[#out + 1] = n
  out[#out + 1] = redis.call(ARGV[4], ARGV[a + 1], bodies[j] .. ',"id":"' .. n .. '"}')
  a = a + 3
end
return out
EOF

taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.3; done
redis-cli -p "$port" ping >/dev/null || { echo "redis-server did not start" >&2; exit 1; }
vpid=$(pgrep -f "callgrind.*--port $port" | head -1)
for _ in 1 2; do (redis-cli -p "$port" subscribe c:1 >/dev/null 2>&1 &); done

payload='{"type":"message","location":"/conversations/1/messages/2","data":{"id":2,"by":{"id":9,"name":"Alice"},"text":"hello there, this is a message of typical length","timestamp":"2026-12-02T05:00:00Z"}}'
command_of() {  # command_of <sha>: sets cmd to the EVALSHA call of $users users
  local keys=() args=()
  for _ in $(seq "$users"); do
    keys+=("gp:hist:{__rand_int__}" "gp:epoch:{__rand_int__}")
    args+=(c:1 1 0)
  done
  cmd=(EVALSHA "$1" $((users * 2)) "${keys[@]}" 1000 90000000 abcdefghij PUBLISH 1 "$payload" "${args[@]}")
}
bench() { taskset -c 0 redis-benchmark -p "$port" -n "$1" -c 4 -r 1000 -q "${@:2}" >/dev/null; }
# Create every user's history first (the variants append to existing keys, as in situ).
command_of "$(redis-cli -p "$port" script load "$(cat "$work/current.lua")")"
bench 4000 "${cmd[@]}"

measure() {  # measure <calls> <divisor> <command…>: instructions of one run ÷ divisor
  timeout 60 callgrind_control -z "$vpid" >/dev/null 2>&1
  bench "$1" "${@:3}"
  timeout 60 callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  dump=$(ls -t "$work"/cg.out.* | head -1)
  echo $(($(awk '/^(summary|totals):/ {print $2; exit}' "$dump") / $2))
}

for variant in ${@:-current empty commands concat reply list native}; do
  if [ "$variant" = native ]; then
    n=$((calls * users))
    get=$(measure "$n" "$n" -P 10 GET "gp:epoch:{__rand_int__}")
    xadd=$(measure "$n" "$n" -P 10 XADD "gp:hist:{__rand_int__}" NOMKSTREAM MAXLEN '~' 1000 '*' e "$payload")
    publish=$(measure "$n" "$n" -P 10 PUBLISH c:1 "$payload")
    printf '%-9s %6d instructions per user copy (GET %d + XADD %d + PUBLISH %d, %d of each)\n' \
      native $((get + xadd + publish)) "$get" "$xadd" "$publish" "$n"
    continue
  fi
  command_of "$(redis-cli -p "$port" script load "$(cat "$work/$variant.lua")")"
  [ "$variant" = list ] && bench 2000 "${cmd[@]}"  # its keys are its own: create them first
  printf '%-9s %6d instructions per user copy (%d calls of %d users)\n' \
    "$variant" "$(measure "$calls" $((calls * users)) "${cmd[@]}")" "$calls" "$users"
done
