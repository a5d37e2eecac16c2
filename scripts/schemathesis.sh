#!/usr/bin/env bash
# Property-based API fuzzing of the storage service against its OpenAPI document (issue 6).
#
# Starts the built storage-service on a free port of 127.0.0.1 with a temporary database and an API
# token, runs a pinned schemathesis with every check, a fixed seed and a bounded number of examples,
# stops the service, prints a summary with the number of cases and exits non-zero on any failure.
#
#   scripts/schemathesis.sh                 # after `swift build`
#   SCHEMATHESIS_SEED=7 SCHEMATHESIS_MAX_EXAMPLES=50 scripts/schemathesis.sh
#
# Settings (environment): SCHEMATHESIS_SEED (default 20261127), SCHEMATHESIS_MAX_EXAMPLES per operation
# (default 100), SCHEMATHESIS_WORKERS (default 1), STORAGE_SERVICE_BIN (default .build/debug/storage-service),
# SCHEMATHESIS_REPORT_DIR (default .build/schemathesis-report).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION="4.32.5"
SEED="${SCHEMATHESIS_SEED:-20261127}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
# One worker: with more, CPython 3.11's ast module can fail inside Hypothesis ("AST constructor recursion
# depth mismatch"), a runner error that is not a finding.
WORKERS="${SCHEMATHESIS_WORKERS:-1}"
BIN="${STORAGE_SERVICE_BIN:-$ROOT/.build/debug/storage-service}"
VENV="$ROOT/.build/venv-schemathesis"
REPORT_DIR="${SCHEMATHESIS_REPORT_DIR:-$ROOT/.build/schemathesis-report}"

if [ ! -x "$BIN" ] && [ -z "${STORAGE_SERVICE_BIN:-}" ]; then
    BIN="$(swift build --show-bin-path 2>/dev/null)/storage-service"
fi
if [ ! -x "$BIN" ]; then
    echo "schemathesis.sh: $BIN not found: run 'swift build' first" >&2
    exit 2
fi

# A pinned schemathesis in its own venv, installed once.
if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "schemathesis.sh: installing schemathesis $VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

WORK=$(mktemp -d /tmp/wm-schemathesis.XXXXXX)
SERVICE_PID=""
cleanup() {
    if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# A random token per run: the fuzzer sends it; `ignored_auth` checks that calls without it are 401.
TOKEN="fuzz-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
PORT=0 HOST=127.0.0.1 DATABASE_PATH="$WORK/watermarks.db" STORAGE_API_TOKEN="$TOKEN" LOG_LEVEL=info \
    "$BIN" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!

PORT=""
for _ in $(seq 1 300); do
    PORT=$(sed -n 's/.*Storage service listening.*port=\([0-9][0-9]*\).*/\1/p' "$WORK/service.log" | head -1)
    [ -n "$PORT" ] && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { echo "schemathesis.sh: storage-service exited:" >&2; cat "$WORK/service.log" >&2; exit 1; }
    sleep 0.1
done
if [ -z "$PORT" ]; then
    # LOG_LEVEL=warning hides the listening line: ask the kernel which port the process bound.
    PORT=$(ss -ltnpH 2>/dev/null | awk -v pid="pid=$SERVICE_PID," '$0 ~ pid { n = split($4, a, ":"); print a[n]; exit }')
fi
[ -n "$PORT" ] || { echo "schemathesis.sh: no port from storage-service" >&2; cat "$WORK/service.log" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT"

# Schema-valid data may be refused only for reasons of state: a missing or wrong token (401, 403), a source
# that does not exist (404), a lease or regression conflict (409), a stale If-Match (412). Never 400: the one
# body rule the document cannot state (a success timestamp too far ahead of the server's clock) is kept out
# of generated bodies by scripts/schemathesis_hooks.py.
cat >"$WORK/schemathesis.toml" <<TOML
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "412"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "409", "412", "413", "415"]
TOML

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
echo "schemathesis.sh: schemathesis $VERSION against $BASE, seed $SEED, at most $MAX_EXAMPLES examples per operation"
set +e
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" \
    "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.yaml" \
    --url "$BASE" \
    --checks all \
    --seed "$SEED" \
    --max-examples "$MAX_EXAMPLES" \
    --workers "$WORKERS" \
    --header "Authorization: Bearer $TOKEN" \
    --request-timeout 10 \
    --generation-database none \
    --no-color \
    --report junit,json --report-dir "$REPORT_DIR" \
    2>&1 | tee "$WORK/schemathesis.out"
STATUS=${PIPESTATUS[0]}
set -e

if ! kill -0 "$SERVICE_PID" 2>/dev/null; then
    echo "schemathesis.sh: FAILED: storage-service died during the run:" >&2
    cat "$WORK/service.log" >&2
    exit 1
fi
if grep -qiE "internal_error|Unexpected error|Fatal error" "$WORK/service.log"; then
    echo "schemathesis.sh: FAILED: the service logged an unexpected error:" >&2
    grep -iE "internal_error|Unexpected error|Fatal error" "$WORK/service.log" | head -20 >&2
    STATUS=1
fi

# "Test cases: N generated, M passed, ..." is schemathesis' own count of the cases it ran.
CASES=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$WORK/schemathesis.out" | tail -1)
FAILURES=$(grep -cE "^[0-9]+\. Test Case ID" "$WORK/schemathesis.out" || true)
echo "schemathesis.sh: summary: cases=${CASES:-0} failures=${FAILURES:-0} seed=$SEED max_examples=$MAX_EXAMPLES exit=$STATUS"
if [ "$STATUS" -ne 0 ]; then
    echo "schemathesis.sh: FAILED (see above; reports in $REPORT_DIR)" >&2
    exit 1
fi
echo "schemathesis.sh: OK"
