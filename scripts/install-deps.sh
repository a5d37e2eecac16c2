#!/usr/bin/env bash
# Installs what building and testing need and is not there yet: the system SQLite headers (GRDB links
# the system libsqlite3), Python's venv module (test tools such as medallion run in a venv) and the openssl
# command (scripts/make-dev-certs.sh, which the TLS tests use), and PostgreSQL (the tests of the PostgreSQL
# store start their own server from its binaries; as root they run it as the unprivileged user watermark-pg,
# created here, because initdb and pg_ctl refuse root), Prometheus (its promtool runs the alert rules' unit
# tests, deploy/prometheus/alerts.test.yml, and the Prometheus integration test runs its server) and
# Chromium (a web-view test renders a page in headless Chromium).
# Idempotent and quiet when everything is present.
set -euo pipefail

missing=()
dpkg -s libsqlite3-dev >/dev/null 2>&1 || missing+=(libsqlite3-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: please install ${missing[*]} (no apt-get here)" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v swift >/dev/null 2>&1 || { echo "install-deps: a Swift 6.1+ toolchain is needed (swift not on PATH)" >&2; exit 1; }
if [ "$(id -u)" = 0 ] && ! id -u watermark-pg >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /bin/false watermark-pg
fi
