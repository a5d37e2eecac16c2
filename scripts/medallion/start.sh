#!/usr/bin/env bash
# Starts OASIS medallion (a real TAXII 2.1 server, from PyPI) for the collection integration tests.
#
#   scripts/medallion/start.sh PORT WORKDIR
#
# - Creates a virtual environment with medallion once (MEDALLION_VENV, default .build/venv-medallion
#   at the repository root) and reuses it afterwards.
# - Writes WORKDIR/data.json (an api root "api1" with one empty read/write collection, id
#   MEDALLION_COLLECTION_ID) and WORKDIR/conf.json (user admin / Password0, medallion's in-memory
#   backend with its calls serialized by serialized_backend.py).
# - Replaces itself with the server (exec), so the caller's process id is medallion's and a signal
#   to it stops the server.
# Fails loudly (non-zero, message on stderr) when python or the install is unavailable.
set -euo pipefail

PORT="${1:?usage: start.sh PORT WORKDIR}"
WORKDIR="${2:?usage: start.sh PORT WORKDIR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${MEDALLION_VENV:-$ROOT/.build/venv-medallion}"
COLLECTION_ID="${MEDALLION_COLLECTION_ID:-4f1c9a52-7d2e-4c1b-9a57-2f6f0d1c3e01}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/medallion" ]; then
    command -v "$PYTHON" >/dev/null || { echo "start.sh: $PYTHON not found; medallion needs Python 3" >&2; exit 3; }
    # Several test processes may race to create it: one installs, the others wait for the lock.
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9
    if [ ! -x "$VENV/bin/medallion" ]; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" >&2 || { echo "start.sh: cannot create a virtual environment at $VENV" >&2; exit 3; }
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "medallion==3.0.0" >&2 \
            || { echo "start.sh: pip install medallion failed (no network to PyPI?)" >&2; rm -rf "$VENV"; exit 3; }
    fi
    flock -u 9
fi

mkdir -p "$WORKDIR"
sed "s/@COLLECTION_ID@/$COLLECTION_ID/" "$HERE/data.template.json" > "$WORKDIR/data.json"
cat > "$WORKDIR/conf.json" <<JSON
{
  "backend": {"module": "serialized_backend", "module_class": "SerializedMemoryBackend",
              "filename": "$WORKDIR/data.json"},
  "users": {"admin": "Password0"},
  "taxii": {"max_page_size": 100}
}
JSON

# serialized_backend.py (next to this script): medallion's memory backend, one call at a time (it loses
# acknowledged versions when a GET and a POST meet; see that file).
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/medallion" --host 127.0.0.1 --port "$PORT" --log-level INFO "$WORKDIR/conf.json"
