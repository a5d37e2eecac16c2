#!/usr/bin/env bash
# Writes a throw-away certificate authority and a server certificate for each service into a folder,
# for trying HTTPS out (docker-compose.tls.yml mounts ./certs) and for the tests. Not for production:
# use your own CA's certificates there (deploy/k8s/tls shows where they go).
#
#   scripts/make-dev-certs.sh [FOLDER]       # default ./certs
#
# Writes, each PEM: ca.pem (what clients trust: STORAGE_CA_PATH, healthcheck --ca-path) and ca.key;
# storage.pem + storage.key and collection.pem + collection.key (TLS_CERT_PATH, TLS_KEY_PATH), valid for
# the compose service name, localhost and 127.0.0.1, for DAYS days (default 30). The keys are made
# readable by the containers' user (mode 0644): keep the folder to yourself.
set -euo pipefail

OUT="${1:-certs}"
DAYS="${DAYS:-30}"
command -v openssl >/dev/null || { echo "make-dev-certs.sh: openssl is missing (apt-get install -y openssl)" >&2; exit 2; }
mkdir -p "$OUT"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

openssl req -x509 "${EC[@]}" -keyout "$OUT/ca.key" -out "$OUT/ca.pem" -days "$DAYS" \
    -subj "/CN=watermark platform development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

serial=1
for name in storage collection; do
    extensions=$(mktemp)
    printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
        "$name" >"$extensions"
    openssl req "${EC[@]}" -keyout "$OUT/$name.key" -out "$OUT/$name.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$OUT/$name.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -set_serial "$serial" \
        -days "$DAYS" -out "$OUT/$name.pem" -extfile "$extensions" 2>/dev/null
    rm -f "$OUT/$name.csr" "$extensions"
    chmod 0644 "$OUT/$name.key"
    serial=$((serial + 1))
done
echo "make-dev-certs.sh: wrote ca.pem, storage.pem/.key, collection.pem/.key to $OUT (valid $DAYS days)"
