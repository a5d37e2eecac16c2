#!/usr/bin/env python3
"""The storage's replica rules, which no generic tool knows (scripts/lint-deploy.sh runs the tools, then this).

In deploy/k8s/base and its overlays (built by scripts/k8s_render.py) and docker-compose.yml: on SQLite (DATABASE_PATH)
one storage-service replica, Recreate, the database on a writable mount of a claim of the build (compose: a named
volume); on PostgreSQL (DATABASE_URL) several: the URL from a required Secret key, RollingUpdate with maxUnavailable
0, a PodDisruptionBudget with 1 <= minAvailable < replicas, no claim (compose: each in deploy/compose/storage-lb.conf).
Prints `ok - ...` or `FAIL - ...: why` per rule and exits 1 when any failed; needs PyYAML.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from k8s_render import K8S, ROOT, RenderError, overlays, render

counts = {"passed": 0, "failed": 0}


def check(name: str, problems: list[str]) -> None:
    counts["failed" if problems else "passed"] += 1
    print(f"FAIL - {name}: " + "; ".join(problems) if problems else f"ok - {name}")


def one_writer(db: str, replicas: int, mounts: list[tuple], volumes: set[str], kind: str) -> list[str]:
    """A SQLite storage's problems; `mounts` are (volume, path, read-only), `volumes` the ones of `kind`."""
    problems = [] if replicas == 1 else [f"replicas is {replicas}, not 1"]
    mount = max((m for m in mounts if db.startswith(m[1].rstrip("/") + "/")), key=lambda m: len(m[1]), default=None)
    if not db:
        problems.append("DATABASE_PATH is not set")
    elif not mount or mount[0] not in volumes:
        problems.append(f"DATABASE_PATH {db!r} is not on a mounted {kind}")
    elif mount[2]:
        problems.append(f"the database's mount {mount[1]} is read-only")
    return problems


def check_build(folder: Path, docs: list[dict]) -> None:
    rel = folder.relative_to(ROOT)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = objects["Deployment", "storage-service"]["spec"]
    replicas, strategy = deployment.get("replicas", 1), deployment.get("strategy") or {}
    spec = deployment["template"]["spec"]
    container, env = spec["containers"][0], {}
    for source in container.get("envFrom") or []:
        env |= objects.get(("ConfigMap", (source.get("configMapRef") or {}).get("name")), {}).get("data") or {}
    env |= {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}
    volumes = [v for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes}
    if "DATABASE_URL" not in env:
        mounts = [(m["name"], m["mountPath"], m.get("readOnly")) for m in container.get("volumeMounts") or []]
        defined = {volume for volume, claim in claims.items() if ("PersistentVolumeClaim", claim) in objects}
        problems = one_writer(str(env.get("DATABASE_PATH") or ""), replicas, mounts, defined, f"claim of {rel}")
        problems += [] if strategy.get("type") == "Recreate" else [f"strategy is {strategy.get('type')!r}"]
        return check(f"{rel} storage-service: one SQLite writer (1 replica, Recreate), database on a claim", problems)
    ref = (env["DATABASE_URL"] if isinstance(env["DATABASE_URL"], dict) else {}).get("secretKeyRef")
    problems = [] if ref and not ref.get("optional") else ["DATABASE_URL is not from a required secretKeyRef"]
    problems += [] if replicas >= 2 else [f"replicas is {replicas}, not several"]
    if (strategy.get("type"), (strategy.get("rollingUpdate") or {}).get("maxUnavailable")) != ("RollingUpdate", 0):
        problems.append("strategy is not RollingUpdate with maxUnavailable 0")
    labels = deployment["template"]["metadata"]["labels"].items()
    budgets = [d["spec"] for (kind, _), d in objects.items() if kind == "PodDisruptionBudget"]
    if not any(b["selector"]["matchLabels"].items() <= labels and 0 < b.get("minAvailable", 0) < replicas
               for b in budgets):
        problems.append("no PodDisruptionBudget with 1 <= minAvailable < replicas selects the storage pods")
    problems += [f"the stateless storage still mounts the claim {claim!r}" for claim in claims.values()]
    check(f"{rel} storage-service: PostgreSQL replicas (URL from a Secret, RollingUpdate, budget, no claim)", problems)


def check_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    env = {name: service.get("environment") or {} for name, service in services.items()}
    sqlite = [name for name in services if "DATABASE_PATH" in env[name] and "DATABASE_URL" not in env[name]]
    for name in sqlite:
        mounts = [(v + "::").split(":") for v in services[name].get("volumes") or []]
        mounts = [(source, target, "ro" in mode.split(",")) for source, target, mode, *_ in mounts]
        replicas = (services[name].get("deploy") or {}).get("replicas", 1)
        problems = one_writer(str(env[name]["DATABASE_PATH"]), replicas, mounts, volumes, "named volume")
        check(f"docker-compose.yml {name}: one SQLite writer, database on a named volume", problems)
    postgres = [name for name in services if "DATABASE_URL" in env[name]]
    balancer = (ROOT / "deploy" / "compose" / "storage-lb.conf").read_text()
    problems = [] if sqlite else ["no storage service on DATABASE_PATH"]
    problems += [] if len(postgres) >= 2 else [f"{len(postgres)} storage replicas on DATABASE_URL, not several"]
    problems += [f"storage-lb.conf does not name {name}" for name in postgres if f"server {name}:8000" not in balancer]
    check("docker-compose.yml: a SQLite storage; profile postgres: storage replicas behind storage-lb", problems)


def main() -> int:
    folders = overlays()
    if K8S not in folders:
        check(f"{K8S.relative_to(ROOT)}/kustomization.yaml exists", ["not found"])
    errors = (OSError, yaml.YAMLError, RenderError, KeyError, TypeError, AttributeError, IndexError)
    for folder in folders:
        try:
            check_build(folder, render(folder))
        except errors as error:
            check(f"{folder.relative_to(ROOT)}: builds, with a storage-service", [f"{type(error).__name__}: {error}"])
    try:
        check_compose()
    except errors as error:
        check("docker-compose.yml: parses, with services", [f"{type(error).__name__}: {error}"])
    print(f"check_deploy: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
