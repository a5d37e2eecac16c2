#!/usr/bin/env bash
# `make run-all`: the storage service on :8000 and the collection service on :8001 with the offline
# demo (drop folders under demo/), database and collected data under ./data/ so a restart resumes
# from the stored watermarks. Ctrl-C (or SIGTERM) stops both, gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BIN_DIR:-$(swift build --show-bin-path)}
storage_port=${STORAGE_PORT:-8000}
collection_port=${COLLECTION_PORT:-8001}
mkdir -p data

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "run-all: stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "run-all: stopped"
}
# Ctrl-C (or SIGTERM) is the normal end: both services stopped, exit 0.
on_signal() {
  stop
  exit 0
}
trap on_signal INT TERM
trap stop EXIT

PORT=$storage_port HOST=${HOST:-127.0.0.1} DATABASE_PATH=${DATABASE_PATH:-data/watermarks.db} \
  "$bin/storage-service" &
pids+=($!)

# Wait for the storage to answer before starting the collector (it would cope, but the demo reads better).
for _ in $(seq 1 100); do
  "$bin/storage-service" healthcheck --url "http://127.0.0.1:$storage_port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

PORT=$collection_port HOST=${HOST:-127.0.0.1} DATA_DIR=${DATA_DIR:-data/collection} \
  COLLECTION_CONFIG=${COLLECTION_CONFIG:-demo/config/sources.json} \
  STORAGE_SERVICE_URL=${STORAGE_SERVICE_URL:-http://127.0.0.1:$storage_port} \
  "$bin/collection-service" &
pids+=($!)

# watermarkctl talks to http://127.0.0.1:8000 unless told otherwise.
ctl="$bin/watermarkctl"
[ "$storage_port" = 8000 ] || ctl="STORAGE_SERVICE_URL=http://127.0.0.1:$storage_port $ctl"

cat <<INFO

  Web view           http://127.0.0.1:$collection_port/   (every source at a glance; refreshes itself)
  Storage Service    http://127.0.0.1:$storage_port   (database: ${DATABASE_PATH:-data/watermarks.db})
  Collection Service http://127.0.0.1:$collection_port   (sources: ${COLLECTION_CONFIG:-demo/config/sources.json})

  $ctl list                  # every watermark, with ages
  $ctl history demo-feeds    # its runs: who, why, how many records

  curl -s http://127.0.0.1:$storage_port/api/v1/watermarks            # every watermark (JSON)
  curl -s http://127.0.0.1:$storage_port/api/v1/watermarks/demo-feeds # one source
  curl -s http://127.0.0.1:$collection_port/status                    # runs, next runs, ages, queue
  ls ${DATA_DIR:-data/collection}/demo-feeds/                          # the collected records (NDJSON)
  demo/inbox/README.md                                                # drop a file there: collected once

  Ctrl-C stops both. (pids: storage=${pids[0]} collection=${pids[1]})

INFO

# A service that ends on its own is a failure: stop the other and exit 1.
wait -n "${pids[@]}"
status=$?
echo "run-all: a service exited by itself (status $status); stopping the other" >&2
exit 1
