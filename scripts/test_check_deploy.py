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
COPIED = ["scripts/check_deploy.py", "scripts/k8s_render.py", "deploy", "docker-compose.yml"]


def replace(path: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        file = root / path
        text = file.read_text()
        if old not in text:
            raise AssertionError(f"mutation target {old!r} not in {path}")
        file.write_text(text.replace(old, new, count))

    return mutate


def cut(path: str, start: str, end: str) -> Callable[[Path], None]:
    """Removes the text of `path` from `start` up to `end` (which stays)."""

    def mutate(root: Path) -> None:
        file = root / path
        text = file.read_text()
        if start not in text or end not in text.split(start, 1)[1]:
            raise AssertionError(f"cut targets {start!r}..{end!r} not in {path}")
        head, tail = text.split(start, 1)
        file.write_text(head + end + tail.split(end, 1)[1])

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


# The postgres overlay's patch of the collection Deployment.
SINK = "deploy/k8s/postgres/collection-shared-sink.yaml"

# (name, mutation, text expected in a FAIL line)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    # What k8s_render.py refuses: a manifest or kustomization it would otherwise misread or skip.
    ("manifest that does not parse", replace("deploy/k8s/base/storage.yaml", "replicas: 1", "replicas: [1"), "builds, with"),
    ("manifest the kustomization does not name", lambda root: (root / "deploy/k8s/base/extra.yaml").write_text("{}"), "does not name extra.yaml"),
    ("patch of a missing object", replace("deploy/k8s/tls/storage-tls.yaml", "name: storage-service", "name: storage"), "patches Deployment 'storage'"),
    ("kustomization field unknown to the renderer", replace("deploy/k8s/tls/kustomization.yaml", "patches:", "namePrefix: x-\npatches:"), "uses namePrefix"),
    ("no manifests", lambda root: [p.unlink() for p in (root / "deploy/k8s/base").glob("*.yaml")], "deploy/k8s/base/kustomization.yaml exists"),
    ("overlay inside its base", inner_overlay, "cycle detected"),
    # SQLite: one writer, the database on a claim.
    ("storage at 2 replicas", replace("deploy/k8s/base/storage.yaml", "replicas: 1", "replicas: 2"), "replicas is 2, not 1"),
    ("storage RollingUpdate", replace("deploy/k8s/base/storage.yaml", "type: Recreate", "type: RollingUpdate"), "strategy is 'RollingUpdate'"),
    ("no DATABASE_PATH", replace("deploy/k8s/base/configmap.yaml", 'DATABASE_PATH: "/data/watermarks.db"', 'DATABASE: "/data/watermarks.db"'), "DATABASE_PATH is not set"),
    ("database on an emptyDir", replace("deploy/k8s/base/storage.yaml", "persistentVolumeClaim:\n            claimName: storage-data", "emptyDir: {}"), "is not on a mounted claim"),
    ("database path off the volume", replace("deploy/k8s/base/configmap.yaml", '"/data/watermarks.db"', '"/var/lib/watermarks.db"'), "is not on a mounted claim"),
    ("undefined claim", replace("deploy/k8s/base/storage.yaml", "claimName: storage-data", "claimName: nowhere"), "is not on a mounted claim of deploy/k8s/base"),
    ("database mounted read-only", replace("deploy/k8s/base/storage.yaml", "mountPath: /data\n", "mountPath: /data\n              readOnly: true\n"), "mount /data is read-only"),
    ("compose storage at 2 replicas", replace("docker-compose.yml", "  storage:\n    build:", "  storage:\n    deploy:\n      replicas: 2\n    build:"), "replicas is 2, not 1"),
    ("compose database in the container", replace("docker-compose.yml", "- storage-data:/data", "- storage-data:/var/data"), "is not on a mounted named volume"),
    ("compose database volume read-only", replace("docker-compose.yml", "- storage-data:/data\n", "- storage-data:/data:ro\n"), "mount /data is read-only"),
    # PostgreSQL: several stateless replicas.
    ("postgres URL in plain text", replace("deploy/k8s/postgres/storage-postgres.yaml", "valueFrom:\n                secretKeyRef:\n                  name: watermark-secrets\n                  key: database-url", "value: postgres://u:p@db/w"), "DATABASE_URL is not from a required secretKeyRef"),
    ("postgres URL optional", replace("deploy/k8s/postgres/storage-postgres.yaml", "key: database-url", "key: database-url\n                  optional: true"), "DATABASE_URL is not from a required secretKeyRef"),
    ("postgres at 1 replica", replace("deploy/k8s/postgres/storage-postgres.yaml", "replicas: 3", "replicas: 1"), "replicas is 1, not several"),
    ("postgres without a budget", replace("deploy/k8s/postgres/storage-pdb.yaml", "minAvailable: 2", "minAvailable: 3"), "no PodDisruptionBudget"),
    ("postgres rolling with unavailable pods", replace("deploy/k8s/postgres/storage-postgres.yaml", "maxUnavailable: 0", "maxUnavailable: 1"), "not RollingUpdate with maxUnavailable 0"),
    ("postgres keeping the claim", replace("deploy/k8s/postgres/storage-postgres.yaml", "      volumes:\n        - name: data\n          $patch: delete\n", ""), "still mounts the claim"),
    ("compose profile with one replica", replace("docker-compose.yml", "  storage-pg-2: *storage-pg\n", ""), "1 storage replicas on DATABASE_URL"),
    ("balancer missing a replica", replace("deploy/compose/storage-lb.conf", "    server storage-pg-2:8000 max_fails=1 fail_timeout=5s;\n", ""), "does not name storage-pg-2"),
    ("postgres key not in the Secret", replace("deploy/secret.example.yaml", "  database-url:", "  database:"), "DATABASE_URL's key 'database-url' is not in"),
    # The shared sink: several leased collection replicas, each its own owner and local state.
    ("collection at 1 replica on the sink", replace(SINK, "replicas: 2", "replicas: 1"), "collection replicas is 1, not several"),
    ("sink URL in plain text", replace(SINK, "valueFrom:\n                secretKeyRef:\n                  name: watermark-secrets\n                  key: sink-url", "value: postgres://u:p@db/w"), "SINK_URL is not from a required secretKeyRef"),
    ("sink key not in the Secret", replace("deploy/secret.example.yaml", "  sink-url:", "  sink:"), "SINK_URL's key 'sink-url' is not in"),
    ("collection without leases", replace("deploy/k8s/base/collection.yaml", 'REQUIRE_LEASE\n              value: "true"', 'REQUIRE_LEASE\n              value: "false"'), "REQUIRE_LEASE is 'false'"),
    ("collection replicas under one owner", replace("deploy/k8s/base/collection.yaml", "valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name", "value: collector"), "INSTANCE_ID is not the pod's name"),
    ("collection replicas on the base's claim", replace(SINK, "        - name: data\n          persistentVolumeClaim: null\n          emptyDir:\n            sizeLimit: 1Gi\n", "        - name: tmp\n          emptyDir: {}\n"), "DATA_DIR is on the claim 'collection-data'"),
    ("collection DATA_DIR off the volumes", replace("deploy/k8s/base/configmap.yaml", 'DATA_DIR: "/data"', 'DATA_DIR: "/var/data"'), "DATA_DIR is not on a mounted volume"),
    # Drop folders on a volume that starts empty are made before the service starts.
    ("drop folder never made", replace("deploy/k8s/base/collection.yaml", 'command: ["mkdir", "-p", "/data/drop/inbox"]', 'command: ["true"]'), "drop folder '/data/drop/inbox' of source 'inbox' is not made"),
    ("drop folder moved, not made", replace("deploy/k8s/base/configmap.yaml", '"path": "/data/drop/inbox"', '"path": "/data/drop/other"'), "drop folder '/data/drop/other' of source 'inbox' is not made"),
    ("sources ConfigMap renamed", replace("deploy/k8s/base/configmap.yaml", "name: collection-sources", "name: sources"), "no ConfigMap collection-sources"),
    ("drop folder in the image", replace("deploy/k8s/base/configmap.yaml", '"path": "/data/drop/inbox"', '"path": "/srv/inbox"'), "drop folder '/srv/inbox' of source 'inbox' is not on a mounted volume"),
    ("compose sink with one replica", cut("docker-compose.yml", "  collection-pg-2:\n", "volumes:\n  storage-data:"), "1 collection replicas on SINK_URL"),
    ("compose sink replica outside the profile", replace("docker-compose.yml", "    <<: *collection-pg\n", "    <<: *collection-pg\n    profiles: [other]\n"), "collection-pg-2 is not in profile postgres"),
    ("compose sink replicas without leases", replace("docker-compose.yml", 'REQUIRE_LEASE: "true"', 'REQUIRE_LEASE: "false"'), "REQUIRE_LEASE is not true"),
    ("compose sink replicas under one owner", replace("docker-compose.yml", "      INSTANCE_ID: compose-collection-pg-2\n", ""), "are not distinct"),
    ("compose sink replicas sharing a volume", replace("docker-compose.yml", "- collection-pg-2-data:/data", "- collection-pg-1-data:/data"), "are not distinct named volumes"),
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
