#!/usr/bin/env bash
# `make bench`: release builds of the storage service and of a Hummingbird hello world (bench/Hello), then
# bench/run.py: an fsync probe of the database's disk and every scenario at 1 and 64 connections with wrk,
# each figure a ratio to the hello world of the same run (disk and CPU speed swing by the hour; only ratios
# within one run mean something), for the service on SQLite, on PostgreSQL (a throwaway server, bench/pg.py)
# with one replica and with two replicas on one database. Prints a table per variant and a comparison, and
# writes bench/results/<date>.json; never asserts.
#
# PROFILE picks what runs: `http` (the default: the table above), `collector` (bench/collector.py: a million STIX
# objects from a drop folder and from a TAXII-like feed through collection-service, against a plain-Python
# loop of the same run), `scale` (bench/scale.py: a million watermarks and ten million history rows against
# the same service with a thousand), or `all`.
# BENCH_DURATION (4s) per wrk run, BENCH_ROUNDS (3: each HTTP figure is the median of three rounds, each round a
# hello world then the scenarios), BENCH_CONNECTIONS (1,64), BENCH_BACKENDS (sqlite,postgres), BENCH_RECORDS
# (1000000), BENCH_COLLECTOR_SOURCES (drop,taxii), BENCH_CONFIG (release), BENCH_RESULTS_DIR (bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi
config=${BENCH_CONFIG:-release}
profile=${PROFILE:-http}
case "$profile" in
  http|collector|scale|all) ;;
  *) echo "bench: PROFILE must be http, collector, scale or all (got $profile)" >&2; exit 2 ;;
esac
# `make bench` has run scripts/install-deps.sh (PostgreSQL, the watermark-pg user) already; run directly, this
# script installs PostgreSQL the same way when the http or scale profile needs it.
if [ "$profile" != collector ] && [[ ${BENCH_BACKENDS:-postgres} == *postgres* ]] \
  && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  bash scripts/install-deps.sh
fi
# Built as the Dockerfile builds what ships: the Swift runtime and Foundation linked into the executable. Every
# product of the run, the hello world too, is built alike, so the ratios compare like with like. Linked
# dynamically, each call into the runtime went through the PLT and each of its thread-local reads through
# `__tls_get_addr`: PUT at 64 connections 17.7k against 19.6k req/s, GET 46.5k against 50.4k (four alternating
# rounds), service CPU a PUT 80-83 against 74-76 us.
link=(--static-swift-stdlib)
swift build -c "$config" "${link[@]}" --product storage-service
bin=$(swift build -c "$config" "${link[@]}" --show-bin-path)
if [ "$profile" = http ] || [ "$profile" = all ]; then
  swift build -c "$config" "${link[@]}" --product bench-hello
  python3 bench/run.py "$bin"
fi
if [ "$profile" = collector ] || [ "$profile" = all ]; then
  swift build -c "$config" "${link[@]}" --product collection-service
  python3 bench/collector.py "$bin"
fi
if [ "$profile" = scale ] || [ "$profile" = all ]; then
  python3 bench/scale.py "$bin"
fi
