#!/usr/bin/env bash
# Lints every OpenAPI document the storage service can serve with a maintained validator
# (openapi-spec-validator from PyPI, pinned, in a venv under .build/venv-openapi):
#   - with no token configured, with STORAGE_API_TOKEN, and with STORAGE_API_TOKEN + STORAGE_READ_TOKEN,
#     each printed by `storage-service openapi` exactly as `/openapi.yaml` serves it;
#   - and, as a self-test, a copy broken on purpose (a response without its description), which the
#     validator must refuse, so a validator that accepts anything cannot pass.
#
#   scripts/lint-openapi.sh            # after `swift build`; STORAGE_SERVICE_BIN names another binary
#
# Prints one line per document and `lint-openapi: N passed, M failed`; exits 1 when anything failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$(pwd)
VERSION="0.9.0"
VENV="$ROOT/.build/venv-openapi"
BIN="${STORAGE_SERVICE_BIN:-$ROOT/.build/debug/storage-service}"
if [ ! -x "$BIN" ] && [ -z "${STORAGE_SERVICE_BIN:-}" ]; then
    BIN="$(swift build --show-bin-path 2>/dev/null)/storage-service"
fi
if [ ! -x "$BIN" ]; then
    echo "lint-openapi.sh: $BIN not found: run 'swift build' first" >&2
    exit 2
fi

installed=$("$VENV/bin/pip" show openapi-spec-validator 2>/dev/null || true)
if [ ! -x "$VENV/bin/openapi-spec-validator" ] || ! grep -qx "Version: $VERSION" <<<"$installed"; then
    echo "lint-openapi.sh: installing openapi-spec-validator $VERSION into $VENV" >&2
    python3 -m venv "$VENV" || exit 1
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$VERSION" || exit 1
fi

WORK=$(mktemp -d /tmp/wm-lint-openapi.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

# Writes the document `serve` would serve with the given environment to $WORK/$1.yaml.
render() {
    local name=$1
    shift
    env -i PATH="$PATH" "$@" "$BIN" openapi >"$WORK/$name.yaml"
}

# validate NAME EXPECTED LABEL: runs the validator on $WORK/NAME.yaml; passes when its verdict is
# EXPECTED (valid or invalid), else prints what it said.
validate() {
    local name=$1 expected=$2 label=$3 verdict=invalid
    "$VENV/bin/openapi-spec-validator" "$WORK/$name.yaml" >"$WORK/$name.out" 2>&1 && verdict=valid
    if [ "$verdict" = "$expected" ]; then
        passed=$((passed + 1))
        echo "ok - $label"
    else
        failed=$((failed + 1))
        echo "FAIL - $label: the validator found it $verdict"
        sed 's/^/    /' "$WORK/$name.out" | head -40
    fi
}

render no-token || exit 1
render api-token STORAGE_API_TOKEN=lint-api || exit 1
render read-token STORAGE_API_TOKEN=lint-api STORAGE_READ_TOKEN=lint-read || exit 1
for name in no-token api-token read-token; do validate "$name" valid "openapi-spec-validator: $name"; done

# The self-test: the first "204": {description: ...} loses its required description, and the
# validator must refuse the copy.
sed '0,/"204": {description: Deleted}/s//"204": {}/' "$WORK/api-token.yaml" >"$WORK/broken.yaml"
if cmp -s "$WORK/api-token.yaml" "$WORK/broken.yaml"; then
    failed=$((failed + 1))
    echo "FAIL - self-test: could not break the document (the 204 line moved?)"
else
    validate broken invalid "self-test: the validator refuses a response without a description"
fi

echo "lint-openapi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
