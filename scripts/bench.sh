#!/usr/bin/env bash
# `make bench`: load on a release build of the storage service with wrk (one thread, as the machine
# has 2 cores). Disk fsync time swings by the hour, so every figure is printed next to a baseline
# measured in the same invocation: GET /health (no database) and a GET of one watermark (a read).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${BENCH_DURATION:-10s}
connections=${BENCH_CONNECTIONS:-16}

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi
config=${BENCH_CONFIG:-release}
swift build -c "$config" --product storage-service >/dev/null
bin=$(swift build -c "$config" --show-bin-path)

work=$(mktemp -d)
log="$work/storage.log"
PORT=0 HOST=127.0.0.1 DATABASE_PATH="$work/bench.db" LOG_LEVEL=warning "$bin/storage-service" >"$log" 2>&1 &
pid=$!
cleanup() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# LOG_LEVEL=warning hides the "listening" line, so find the port from the process's socket.
port=""
for _ in $(seq 1 100); do
  port=$(ss -ltnp 2>/dev/null | awk -v pid="pid=$pid," '$0 ~ pid {split($4, a, ":"); print a[length(a)]; exit}')
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "bench: the service did not start"; cat "$log"; exit 1; }
base="http://127.0.0.1:$port"

curl -sf -X PUT "$base/api/v1/watermarks/bench-read" -H 'Content-Type: application/json' \
  -d '{"timestamp":"2024-01-01T00:00:00Z","status":"success","records_collected":1}' >/dev/null

cat >"$work/put.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local id = "bench-" .. (counter % 64)
  local body = '{"timestamp":"2024-01-01T00:00:00.' .. string.format("%09d", counter) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/" .. id .. "?force=true", {["Content-Type"] = "application/json"}, body)
end
LUA

run() { # name, wrk args... -> requests/sec
  local name=$1
  shift
  wrk -t1 -c"$connections" -d"$duration" --latency "$@" >"$work/$name.out" 2>&1
  awk '/Requests\/sec/ {print $2}' "$work/$name.out"
}

health=$(run health "$base/health")
read_rps=$(run read "$base/api/v1/watermarks/bench-read")
write_rps=$(run write -s "$work/put.lua" "$base")

p99() { awk '/ 99%/ {print $2}' "$work/$1.out"; }
echo
printf '%-34s %12s %10s %10s\n' "scenario" "requests/s" "p99" "vs health"
printf '%-34s %12s %10s %10s\n' "GET /health (baseline)" "$health" "$(p99 health)" "1.00"
printf '%-34s %12s %10s %10s\n' "GET one watermark" "$read_rps" "$(p99 read)" "$(awk -v a="$read_rps" -v b="$health" 'BEGIN {printf "%.2f", a/b}')"
printf '%-34s %12s %10s %10s\n' "PUT (fsync per write, 64 sources)" "$write_rps" "$(p99 write)" "$(awk -v a="$write_rps" -v b="$health" 'BEGIN {printf "%.2f", a/b}')"
echo "($config build; wrk -t1 -c$connections -d$duration; write/read ratio: $(awk -v a="$write_rps" -v b="$read_rps" 'BEGIN {printf "%.3f", a/b}'))"
