#!/usr/bin/env python3
"""Self-test of scripts/check_deploy.py: every rule must fail on the mistake it exists to catch.

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
    "scripts/k8s_render.py",
    "deploy",
    "docker-compose.yml",
    "docker-compose.tls.yml",
    "Services/Storage/Dockerfile",
    "Services/Collection/Dockerfile",
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


def inner_overlay(root: Path) -> None:
    """An overlay in a folder of the base it builds on: kustomize refuses it (cycle detected)."""
    inner = root / "deploy/k8s/base/inner"
    inner.mkdir()
    (inner / "kustomization.yaml").write_text("resources:\n  - ..\n")


def remove(path: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / path).unlink()

    return mutate


# (name, mutation, text expected in a FAIL line)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("manifest that does not parse", replace("deploy/k8s/base/storage.yaml", "replicas: 1", "replicas: [1"), "builds: "),
    ("manifest the kustomization does not name", lambda root: (root / "deploy/k8s/base/extra.yaml").write_text("{}"), "does not name extra.yaml"),
    ("patch of a missing object", replace("deploy/k8s/tls/storage-tls.yaml", "name: storage-service", "name: storage"), "patches Deployment 'storage'"),
    ("kustomization field unknown to the renderer", replace("deploy/k8s/tls/kustomization.yaml", "patches:", "namePrefix: x-\npatches:"), "uses namePrefix"),
    ("storage at 2 replicas", replace("deploy/k8s/base/storage.yaml", "replicas: 1", "replicas: 2"), "replicas is 2"),
    ("storage RollingUpdate", replace("deploy/k8s/base/storage.yaml", "type: Recreate", "type: RollingUpdate"), "strategy is 'RollingUpdate'"),
    ("no DATABASE_PATH", replace("deploy/k8s/base/configmap.yaml", 'DATABASE_PATH: "/data/watermarks.db"', 'DATABASE: "/data/watermarks.db"'), "DATABASE_PATH is not set"),
    ("database on an emptyDir", replace("deploy/k8s/base/storage.yaml", "persistentVolumeClaim:\n            claimName: storage-data", "emptyDir: {}"), "is not on a mounted PersistentVolumeClaim"),
    ("database path off the volume", replace("deploy/k8s/base/configmap.yaml", '"/data/watermarks.db"', '"/var/lib/watermarks.db"'), "is not on a mounted PersistentVolumeClaim"),
    ("undefined claim", replace("deploy/k8s/base/storage.yaml", "claimName: storage-data", "claimName: nowhere"), "'nowhere' is not defined"),
    ("database mounted read-only", replace("deploy/k8s/base/storage.yaml", "mountPath: /data\n", "mountPath: /data\n              readOnly: true\n"), "mounted read-only"),
    ("liveness on another path", replace("deploy/k8s/base/collection.yaml", "path: /health", "path: /status", 2), "collection-service has no livenessProbe on GET /health"),
    ("probe on a missing port", replace("deploy/k8s/base/storage.yaml", "port: http\n            initialDelaySeconds: 10", "port: 9999\n            initialDelaySeconds: 10"), "storage-service has no livenessProbe"),
    ("token in plain text", replace("deploy/k8s/base/storage.yaml", "- name: STORAGE_API_TOKEN\n              valueFrom:\n                secretKeyRef:\n                  name: watermark-secrets\n                  key: storage-api-token", "- name: STORAGE_API_TOKEN\n              value: hunter2"), "storage-service does not take STORAGE_API_TOKEN"),
    ("token optional", replace("deploy/k8s/base/collection.yaml", "key: storage-api-token", "key: storage-api-token\n                  optional: true"), "collection-service does not take STORAGE_API_TOKEN"),
    ("secret key missing from example", replace("deploy/secret.example.yaml", "otx-api-key:", "otx-key:"), "needs key otx-api-key"),
    ("no storage Service", replace("deploy/k8s/base/storage.yaml", "kind: Service\n", "kind: Endpoints\n"), "is not a port of the Service"),
    ("Service selecting other pods", replace("deploy/k8s/base/storage.yaml", "  selector:\n    app.kubernetes.io/name: storage-service", "  selector:\n    app.kubernetes.io/name: storage"), "does not select the storage pods"),
    ("storage URL to a wrong port", replace("deploy/k8s/base/configmap.yaml", "http://storage-service:8000", "http://storage-service:9000"), "port 9000 is not a port"),
    ("storage URL to an unknown host", replace("deploy/k8s/base/configmap.yaml", "http://storage-service:8000", "http://storage:8000"), "is not http://storage-service:PORT"),
    ("INSTANCE_ID constant", replace("deploy/k8s/base/collection.yaml", "fieldPath: metadata.name", "fieldPath: metadata.namespace"), "INSTANCE_ID is not from fieldRef"),
    ("sources file not JSON", replace("deploy/k8s/base/configmap.yaml", '"sources": [', '"sources": [[', 1), "is not valid JSON sources"),
    ("sources file not mounted", replace("deploy/k8s/base/configmap.yaml", 'COLLECTION_CONFIG: "/config/sources.json"', 'COLLECTION_CONFIG: "/etc/sources.json"'), "is not valid JSON sources"),
    ("postgres URL in plain text", replace("deploy/k8s/postgres/storage-postgres.yaml", "valueFrom:\n                secretKeyRef:\n                  name: watermark-secrets\n                  key: database-url", "value: postgres://u:p@db/w"), "DATABASE_URL is not from a required secretKeyRef"),
    ("postgres at 1 replica", replace("deploy/k8s/postgres/storage-postgres.yaml", "replicas: 3", "replicas: 1"), "replicas is 1, not several"),
    ("postgres without a budget", replace("deploy/k8s/postgres/storage-pdb.yaml", "minAvailable: 2", "minAvailable: 3"), "no PodDisruptionBudget"),
    ("postgres rolling with unavailable pods", replace("deploy/k8s/postgres/storage-postgres.yaml", "maxUnavailable: 0", "maxUnavailable: 1"), "not RollingUpdate with maxUnavailable 0"),
    ("postgres keeping the claim", replace("deploy/k8s/postgres/storage-postgres.yaml", "      volumes:\n        - name: data\n          $patch: delete\n", ""), "still mounts a claim"),
    ("compose profile with one replica", replace("docker-compose.yml", "  storage-pg-2: *storage-pg\n", ""), "1 storage replicas on postgres"),
    ("balancer missing a replica", replace("deploy/compose/storage-lb.conf", "    server storage-pg-2:8000 max_fails=1 fail_timeout=5s;\n", ""), "does not name storage-pg-2"),
    ("compose collection without lease", replace("docker-compose.yml", 'REQUIRE_LEASE: "true"', 'REQUIRE_LEASE: "false"'), "REQUIRE_LEASE=true"),
    ("TLS key not from the Secret", replace("deploy/k8s/tls/storage-tls.yaml", "value: /etc/watermark/tls/tls.key", "value: /tmp/tls.key"), "TLS_KEY_PATH='/tmp/tls.key' is not a file of a mounted Secret"),
    ("TLS overlay without TLS", replace("deploy/k8s/tls/storage-tls.yaml", "- name: TLS_CERT_PATH", "- name: TLS_CERT"), "TLS_CERT_PATH='' is not a file"),
    ("TLS probe over HTTP", replace("deploy/k8s/tls/storage-tls.yaml", "scheme: HTTPS", "scheme: HTTP"), "readinessProbe does not speak HTTPS"),
    ("TLS collection calling http", replace("deploy/k8s/tls/collection-tls.yaml", "https://storage-service:8000", "http://storage-service:8000"), "is not https://"),
    ("TLS collection without CA", replace("deploy/k8s/tls/collection-tls.yaml", "value: /etc/watermark/ca/ca.crt", "value: /etc/ssl/ca.crt"), "STORAGE_CA_PATH '/etc/ssl/ca.crt' is not a file"),
    ("TLS collection given the key", replace("deploy/k8s/tls/collection-tls.yaml", "- key: ca.crt\n                path: ca.crt", "- key: ca.crt\n                path: ca.crt\n              - key: tls.key\n                path: tls.key"), "the server's private key"),
    ("compose database in the container", replace("docker-compose.yml", "- storage-data:/data", "- storage-data:/var/data"), "no named volume at /data"),
    ("compose healthcheck with curl", replace("docker-compose.yml", '["CMD", "/app/storage-service", "healthcheck"', '["CMD", "curl", "healthcheck"'), "healthcheck does not use the binary"),
    ("compose without healthy dependency", replace("docker-compose.yml", "condition: service_healthy", "condition: service_started"), "does not depend on storage being healthy"),
    ("compose token hard-coded", replace("docker-compose.yml", "STORAGE_API_TOKEN: ${STORAGE_API_TOKEN:-}\n      COLLECTION", "STORAGE_API_TOKEN: secret\n      COLLECTION"), "is not an optional"),
    ("compose config path not mounted", replace("docker-compose.yml", "/demo/config/sources.container.json", "/etc/sources.json"), "is not a file of a bind mount"),
    ("compose TLS key outside ./certs", replace("docker-compose.tls.yml", "TLS_KEY_PATH: /certs/storage.key", "TLS_KEY_PATH: /etc/storage.key"), "TLS_KEY_PATH='/etc/storage.key' is not in a bind-mounted folder"),
    ("compose TLS healthcheck without CA", replace("docker-compose.tls.yml", ',\n             "--ca-path", "/certs/ca.pem"]', ']'), "does not probe https:// with --ca-path"),
    ("compose TLS collection calling http", replace("docker-compose.tls.yml", "STORAGE_SERVICE_URL: https://storage:8000", "STORAGE_SERVICE_URL: http://storage:8000"), "is not https://storage"),
    ("Dockerfile healthcheck with curl", replace("Services/Collection/Dockerfile", 'CMD ["/app/collection-service", "healthcheck"', 'CMD ["curl", "-f"'), "no such HEALTHCHECK"),
    ("no manifests", lambda root: [p.unlink() for p in (root / "deploy/k8s/base").glob("*.yaml")], "deploy/k8s/base/kustomization.yaml exists"),
    ("overlay inside its base", inner_overlay, "cycle detected"),
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
