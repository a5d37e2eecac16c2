#!/usr/bin/env bash
# `make bench`: release builds of the storage service and of a Hummingbird hello world (bench/Hello), then
# bench/run.py: an fsync probe of the database's disk and every scenario at 1 and 64 connections with wrk,
# each figure a ratio to the hello world of the same run (disk and CPU speed swing by the hour; only ratios
# within one run mean something). Prints a table and writes bench/results/<date>.json; never asserts.
#
# BENCH_DURATION (8s) per scenario, BENCH_CONNECTIONS (1,64), BENCH_CONFIG (release).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi
config=${BENCH_CONFIG:-release}
swift build -c "$config" --product storage-service
swift build -c "$config" --product bench-hello
python3 bench/run.py "$(swift build -c "$config" --show-bin-path)"
