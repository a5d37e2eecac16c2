#!/usr/bin/env python3
"""Self-test of scripts/check_deploy.py: every check must fail on the mistake it exists to catch.

Copies the checked files into a temporary tree, runs the checker there once unchanged (it must
pass) and once per mutation below (it must exit 1 with a FAIL line that names the problem).
Prints one line per case and `test_check_deploy: N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
COPIED = [
    "scripts/check_deploy.py",
    "deploy",
    "docker-compose.yml",
    "docker-compose.tls.yml",
    "Services/Storage/Dockerfile",
    "Services/Collection/Dockerfile",
    "demo/feeds",
    "demo/config",
]


def replace(path: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        file = root / path
        text = file.read_text()
        if old not in text:
            raise AssertionError(f"mutation target {old!r} not in {path}")
        file.write_text(text.replace(old, new, count))

    return mutate


def remove(path: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / path).unlink()

    return mutate


# (name, mutation, text expected in a FAIL line)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("manifest that does not parse", replace("deploy/k8s/storage.yaml", "replicas: 1", "replicas: [1"), "does not parse"),
    ("storage at 2 replicas", replace("deploy/k8s/storage.yaml", "replicas: 1", "replicas: 2"), "replicas is 2"),
    ("storage RollingUpdate", replace("deploy/k8s/storage.yaml", "type: Recreate", "type: RollingUpdate"), "strategy is 'RollingUpdate'"),
    ("database on an emptyDir", replace("deploy/k8s/storage.yaml", "persistentVolumeClaim:\n            claimName: storage-data", "emptyDir: {}"), "no PersistentVolumeClaim is mounted"),
    ("database path off the volume", replace("deploy/k8s/configmap.yaml", '"/data/watermarks.db"', '"/var/lib/watermarks.db"'), "is not on a mounted claim"),
    ("undefined claim", replace("deploy/k8s/storage.yaml", "claimName: storage-data", "claimName: nowhere"), "'nowhere' is not defined"),
    ("liveness on another path", replace("deploy/k8s/collection.yaml", "path: /health", "path: /status", 2), "no livenessProbe on GET /health"),
    ("probe on a missing port", replace("deploy/k8s/storage.yaml", "port: http\n            initialDelaySeconds: 10", "port: 9999\n            initialDelaySeconds: 10"), "not a container port"),
    ("no memory limit", replace("deploy/k8s/collection.yaml", "memory: 1Gi", "ephemeral-storage: 1Gi"), "lacks resources.limits.memory"),
    ("token in plain text", replace("deploy/k8s/storage.yaml", "- name: STORAGE_API_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: watermark-secrets\n                  key: storage-api-token", "- name: STORAGE_API_TOKEN\n              value: hunter2"), "does not take STORAGE_API_TOKEN from a secretKeyRef"),
    ("no storage Service", replace("deploy/k8s/storage.yaml", "kind: Service\n", "kind: Endpoints\n"), "no Service selects its pods"),
    ("storage URL to a wrong port", replace("deploy/k8s/configmap.yaml", "http://storage-service:8000", "http://storage-service:9000"), "is not a port of storage-service"),
    ("storage URL to an unknown host", replace("deploy/k8s/configmap.yaml", "http://storage-service:8000", "http://storage:8000"), "does not name a Service"),
    ("INSTANCE_ID constant", replace("deploy/k8s/collection.yaml", "fieldPath: metadata.name", "fieldPath: metadata.namespace"), "INSTANCE_ID is not from fieldRef"),
    ("sources file not JSON", replace("deploy/k8s/configmap.yaml", '"sources": [', '"sources": [[', 1), "is not valid JSON"),
    ("secret key missing from example", replace("deploy/secret.example.yaml", "otx-api-key:", "otx-key:"), "needs key otx-api-key"),
    ("compose without healthy dependency", replace("docker-compose.yml", "condition: service_healthy", "condition: service_started"), "does not depend on storage being healthy"),
    ("compose database in the container", replace("docker-compose.yml", "- storage-data:/data", "- storage-data:/var/data"), "no named volume at /data"),
    ("compose token hard-coded", replace("docker-compose.yml", "STORAGE_API_TOKEN: ${STORAGE_API_TOKEN:-}\n      COLLECTION", "STORAGE_API_TOKEN: secret\n      COLLECTION"), "is not an optional"),
    ("compose config path not mounted", replace("docker-compose.yml", "/demo/config/sources.container.json", "/etc/sources.json"), "is not a file of a bind mount"),
    ("TLS key not from the Secret", replace("deploy/k8s/tls/storage-tls.yaml", "value: /etc/watermark/tls/tls.key", "value: /tmp/tls.key"), "TLS_KEY_PATH='/tmp/tls.key' is not a file of a mounted Secret"),
    ("TLS probe over HTTP", replace("deploy/k8s/tls/storage-tls.yaml", "scheme: HTTPS", "scheme: HTTP"), "readinessProbe does not speak HTTPS"),
    ("TLS collection calling http", replace("deploy/k8s/tls/collection-tls.yaml", "https://storage-service:8000", "http://storage-service:8000"), "is not https://"),
    ("TLS collection given the key", replace("deploy/k8s/tls/collection-tls.yaml", "- key: ca.crt\n                path: ca.crt", "- key: ca.crt\n                path: ca.crt\n              - key: tls.key\n                path: tls.key"), "the server's private key"),
    ("compose TLS healthcheck without CA", replace("docker-compose.tls.yml", '"--ca-path", "/certs/ca.pem"]', ']'), "does not probe https:// with --ca-path"),
    ("Dockerfile running as root", replace("Services/Storage/Dockerfile", "USER 10001:10001", "USER root"), "non-root USER"),
    ("Dockerfile healthcheck with curl", replace("Services/Collection/Dockerfile", 'CMD ["/app/collection-service", "healthcheck"', 'CMD ["curl", "-f"'), "no HEALTHCHECK"),
    ("Dockerfile single stage", replace("Services/Storage/Dockerfile", "FROM ubuntu:${UBUNTU_VERSION}", "# no runtime stage"), "not a multi-stage build"),
    ("demo record without modified", replace("demo/feeds/stix-indicators.json", '"modified": "2026-11-24T08:12:31.000Z",', ""), "is not RFC 3339 UTC"),
    ("demo naive timestamp", replace("demo/feeds/otx-pulses.ndjson", '"modified":"2026-11-25T08:00:00Z"', '"modified":"2026-11-25T08:00:00"'), "is not RFC 3339 UTC"),
    ("demo routable IP", replace("demo/feeds/otx-pulses.ndjson", "198.51.100.200", "8.8.8.8"), "8.8.8.8 is not in a documentation range"),
    ("demo real domain", replace("demo/feeds/stix-indicators.json", "login-update.example.com", "login-update.contoso.com", 2), "is not a reserved example domain"),
    ("demo 7-day lookback", replace("demo/config/sources.json", "315360000", "604800"), "lookback is under 3650 days"),
    ("no manifests", lambda root: [p.unlink() for p in (root / "deploy/k8s").glob("*.yaml")], "no *.yaml"),
]


def run(root: Path) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, str(root / "scripts/check_deploy.py")], capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


def fresh_tree(base: Path) -> Path:
    root = Path(tempfile.mkdtemp(dir=base))
    for item in COPIED:
        source, target = ROOT / item, root / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return root


def main() -> int:
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        code, out = run(fresh_tree(base))
        if code == 0 and "FAIL - " not in out:
            passed += 1
            print("ok - unchanged tree passes")
        else:
            failed += 1
            print("FAIL - unchanged tree does not pass:\n" + out)
        for name, mutate, expected in CASES:
            root = fresh_tree(base)
            try:
                mutate(root)
            except AssertionError as error:
                failed += 1
                print(f"FAIL - {name}: {error}")
                continue
            code, out = run(root)
            hits = [l for l in out.splitlines() if l.startswith("FAIL - ") and expected in l]
            if code == 1 and hits:
                passed += 1
                print(f"ok - {name} is caught")
            else:
                failed += 1
                print(f"FAIL - {name}: exit {code}, no FAIL line with {expected!r}:\n{out}")
    print(f"test_check_deploy: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
