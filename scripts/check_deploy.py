#!/usr/bin/env python3
"""The replica rules, which no generic tool knows (scripts/lint-deploy.sh runs the tools, then this).

In deploy/k8s/base and its overlays (built by scripts/k8s_render.py) and docker-compose.yml: on SQLite (DATABASE_PATH)
one storage-service replica, Recreate, the database on a writable mount of a claim of the build (compose: a named
volume); on PostgreSQL (DATABASE_URL) several: the URL from a required Secret key, RollingUpdate with maxUnavailable
0, a PodDisruptionBudget with 1 <= minAvailable < replicas, no claim (compose: each in deploy/compose/storage-lb.conf).
Beside a PostgreSQL storage the collection-service runs several replicas on the shared sink: SINK_URL from a Secret key
of deploy/secret.example.yaml, REQUIRE_LEASE "true", INSTANCE_ID the pod's name, DATA_DIR on no claim (compose: two
or more services with SINK_URL, REQUIRE_LEASE true, distinct INSTANCE_IDs and named volumes for DATA_DIR). In every
build, each enabled drop folder of the collection's sources that lies on a claim or an emptyDir is made by an init
container.
Prints `ok - ...` or `FAIL - ...: why` per rule and exits 1 when any failed; needs PyYAML.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from k8s_render import DEPLOY, K8S, ROOT, RenderError, overlays, render

counts = {"passed": 0, "failed": 0}


def check(name: str, problems: list[str]) -> None:
    counts["failed" if problems else "passed"] += 1
    print(f"FAIL - {name}: " + "; ".join(problems) if problems else f"ok - {name}")


def mount_of(path: str, mounts: list[tuple]) -> tuple | None:
    """The mount (volume, path, read-only) that holds `path`: the deepest one whose folder contains it."""
    inside = [m for m in mounts if (path.rstrip("/") + "/").startswith(m[1].rstrip("/") + "/")]
    return max(inside, key=lambda m: len(m[1]), default=None)


def from_secret(name: str, value, keys: set[str]) -> list[str]:
    """The problems of an env entry `name` (its value or valueFrom) that must come from a required Secret key."""
    ref = (value if isinstance(value, dict) else {}).get("secretKeyRef")
    if not ref or ref.get("optional"):
        return [f"{name} is not from a required secretKeyRef"]
    return [] if ref.get("key") in keys else [f"{name}'s key {ref.get('key')!r} is not in deploy/secret.example.yaml"]


def one_writer(db: str, replicas: int, mounts: list[tuple], volumes: set[str], kind: str) -> list[str]:
    """A SQLite storage's problems; `mounts` are (volume, path, read-only), `volumes` the ones of `kind`."""
    problems = [] if replicas == 1 else [f"replicas is {replicas}, not 1"]
    mount = mount_of(db, mounts)
    if not db:
        problems.append("DATABASE_PATH is not set")
    elif not mount or mount[0] not in volumes:
        problems.append(f"DATABASE_PATH {db!r} is not on a mounted {kind}")
    elif mount[2]:
        problems.append(f"the database's mount {mount[1]} is read-only")
    return problems


def workload(objects: dict, name: str) -> tuple[dict, dict, dict, list[tuple], dict]:
    """A Deployment's spec, pod spec, first container's environment (ConfigMaps, then env), mounts and claims."""
    deployment = objects["Deployment", name]["spec"]
    spec = deployment["template"]["spec"]
    container, env = spec["containers"][0], {}
    for source in container.get("envFrom") or []:
        env |= objects.get(("ConfigMap", (source.get("configMapRef") or {}).get("name")), {}).get("data") or {}
    env |= {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}
    mounts = [(m["name"], m["mountPath"], m.get("readOnly")) for m in container.get("volumeMounts") or []]
    volumes = [v for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v]
    return deployment, spec, env, mounts, {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes}


def check_build(folder: Path, docs: list[dict], keys: set[str]) -> None:
    rel = folder.relative_to(ROOT)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment, spec, env, mounts, claims = workload(objects, "storage-service")
    replicas, strategy = deployment.get("replicas", 1), deployment.get("strategy") or {}
    if "DATABASE_URL" not in env:
        defined = {volume for volume, claim in claims.items() if ("PersistentVolumeClaim", claim) in objects}
        problems = one_writer(str(env.get("DATABASE_PATH") or ""), replicas, mounts, defined, f"claim of {rel}")
        problems += [] if strategy.get("type") == "Recreate" else [f"strategy is {strategy.get('type')!r}"]
        return check(f"{rel} storage-service: one SQLite writer (1 replica, Recreate), database on a claim", problems)
    problems = from_secret("DATABASE_URL", env["DATABASE_URL"], keys)
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
    deployment, spec, env, mounts, claims = workload(objects, "collection-service")
    replicas, data = deployment.get("replicas", 1), mount_of(str(env.get("DATA_DIR") or "/data"), mounts)
    problems = [] if replicas >= 2 else [f"collection replicas is {replicas}, not several"]
    problems += from_secret("SINK_URL", env.get("SINK_URL"), keys)
    problems += [] if env.get("REQUIRE_LEASE") == "true" else [f"REQUIRE_LEASE is {env.get('REQUIRE_LEASE')!r}"]
    owner = (env.get("INSTANCE_ID") if isinstance(env.get("INSTANCE_ID"), dict) else {}).get("fieldRef") or {}
    problems += [] if owner.get("fieldPath") == "metadata.name" else ["INSTANCE_ID is not the pod's name"]
    if not data or data[0] not in {v["name"] for v in spec.get("volumes") or []}:
        problems.append("DATA_DIR is not on a mounted volume")
    elif data[0] in claims:
        problems.append(f"DATA_DIR is on the claim {claims[data[0]]!r}, which the replicas cannot share")
    check(f"{rel} collection-service: replicas on the shared sink (SINK_URL from a Secret, leases)", problems)


def check_drop_folders(folder: Path, docs: list[dict]) -> None:
    """Each enabled drop folder of the collection's sources file that lies on a volume that starts empty (a claim, an
    emptyDir) is made by an init container (`mkdir -p PATH` on the same volume and path): the service does not make
    one (a folder missing because a mount failed must not pass for an empty inbox), so the source failed every run."""
    rel = folder.relative_to(ROOT)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    spec = objects["Deployment", "collection-service"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    mounts = [(m["name"], m["mountPath"], m.get("readOnly")) for m in container.get("volumeMounts") or []]
    empty = {v["name"] for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v or "emptyDir" in v}
    made = set()
    for init in spec.get("initContainers") or []:
        command = [str(word) for word in (init.get("command") or []) + (init.get("args") or [])]
        if "mkdir" in command:
            init_mounts = {(m["name"], m["mountPath"]) for m in init.get("volumeMounts") or []}
            made |= {(word, mount) for word in command for mount in init_mounts}
    sources = objects.get(("ConfigMap", "collection-sources"))
    problems = [] if sources else ["no ConfigMap collection-sources holds the sources file"]
    for data in (sources or {}).get("data", {}).values():
        for source in (yaml.safe_load(data) or {}).get("sources") or []:
            if source.get("type") != "directory" or source.get("enabled") is False:
                continue
            path, mount = str(source.get("path") or ""), mount_of(str(source.get("path") or ""), mounts)
            if not mount:
                problems.append(f"drop folder {path!r} of source {source.get('id')!r} is not on a mounted volume")
            elif mount[0] in empty and (path, (mount[0], mount[1])) not in made:
                problems.append(f"drop folder {path!r} of source {source.get('id')!r} is not made by an init container")
    check(f"{rel} collection-service: each drop folder on an empty volume is made before the service starts", problems)


def check_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    env = {name: service.get("environment") or {} for name, service in services.items()}
    sqlite = [name for name in services if "DATABASE_PATH" in env[name] and "DATABASE_URL" not in env[name]]
    split = {name: [(v + "::").split(":") for v in service.get("volumes") or []] for name, service in services.items()}
    mounts = {name: [(s, target, "ro" in mode.split(",")) for s, target, mode, *_ in m] for name, m in split.items()}
    for name in sqlite:
        replicas = (services[name].get("deploy") or {}).get("replicas", 1)
        problems = one_writer(str(env[name]["DATABASE_PATH"]), replicas, mounts[name], volumes, "named volume")
        check(f"docker-compose.yml {name}: one SQLite writer, database on a named volume", problems)
    postgres = [name for name in services if "DATABASE_URL" in env[name]]
    balancer = (ROOT / "deploy" / "compose" / "storage-lb.conf").read_text()
    problems = [] if sqlite else ["no storage service on DATABASE_PATH"]
    problems += [] if len(postgres) >= 2 else [f"{len(postgres)} storage replicas on DATABASE_URL, not several"]
    problems += [f"storage-lb.conf does not name {name}" for name in postgres if f"server {name}:8000" not in balancer]
    check("docker-compose.yml: a SQLite storage; profile postgres: storage replicas behind storage-lb", problems)
    sink = [name for name in services if "SINK_URL" in env[name]]
    owners = [env[name].get("INSTANCE_ID") for name in sink]
    data = [(mount_of(str(env[name].get("DATA_DIR") or "/data"), mounts[name]) or ("",))[0] for name in sink]
    problems = [] if len(sink) >= 2 else [f"{len(sink)} collection replicas on SINK_URL, not several"]
    problems += [f"{n} is not in profile postgres" for n in sink if "postgres" not in services[n].get("profiles", [])]
    problems += [f"{name}: REQUIRE_LEASE is not true" for name in sink if env[name].get("REQUIRE_LEASE") != "true"]
    problems += [] if len(set(owners)) == len(owners) else [f"INSTANCE_IDs {owners} are not distinct"]
    if len(set(data)) < len(data) or not set(data) <= volumes:
        problems.append(f"DATA_DIR volumes {data} are not distinct named volumes")
    check("docker-compose.yml profile postgres: collection replicas on SINK_URL, leased, each its own", problems)


def main() -> int:
    folders = overlays()
    if K8S not in folders:
        check(f"{K8S.relative_to(ROOT)}/kustomization.yaml exists", ["not found"])
    errors = (OSError, yaml.YAMLError, RenderError, KeyError, TypeError, AttributeError, IndexError)
    try:
        secret = yaml.safe_load((DEPLOY / "secret.example.yaml").read_text())
        keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
    except errors as error:
        keys = set()
        check("deploy/secret.example.yaml: parses", [f"{type(error).__name__}: {error}"])
    for folder in folders:
        try:
            docs = render(folder)
            check_build(folder, docs, keys)
            check_drop_folders(folder, docs)
        except errors as error:
            check(f"{folder.relative_to(ROOT)}: builds, with its Deployments", [f"{type(error).__name__}: {error}"])
    try:
        check_compose()
    except errors as error:
        check("docker-compose.yml: parses, with services", [f"{type(error).__name__}: {error}"])
    print(f"check_deploy: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
