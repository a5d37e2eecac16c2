#!/usr/bin/env python3
"""Checks the deployment artifacts for what a Docker engine or a cluster would only tell us later.

Run by scripts/lint-deploy.sh (which installs PyYAML if it is missing); run it alone with
`python3 scripts/check_deploy.py` from anywhere. Prints one line per check, `ok - ...` or
`FAIL - ...: why`, and exits 1 when any check failed. Checked:
- deploy/k8s/*.yaml: every document parses and names apiVersion, kind and metadata.name; the
  storage Deployment runs 1 replica with the Recreate strategy and keeps the database on a
  PersistentVolumeClaim; both Deployments have readiness and liveness probes on /health, requests
  and limits on every container, STORAGE_API_TOKEN from a Secret and a Service that selects them;
  the collection reads STORAGE_SERVICE_URL from a ConfigMap that points at the storage Service,
  its INSTANCE_ID from the pod name, and its sources file from a mounted ConfigMap;
  deploy/secret.example.yaml holds every key that is required by a secretKeyRef.
- deploy/k8s/tls (the HTTPS overlay), laid over the base as kustomize would: storage's TLS_CERT_PATH
  and TLS_KEY_PATH are files of a mounted Secret and its probes speak HTTPS; the collection calls an
  https:// STORAGE_SERVICE_URL of the storage Service and its STORAGE_CA_PATH is a mounted CA file,
  without the server's key.
- docker-compose.tls.yml laid over docker-compose.yml: the same, with the certificates in ./certs.
- docker-compose.yml: the fields the issue asks for (docker-compose itself validates the syntax).
- The Dockerfiles: multi-stage, slim runtime, non-root, a HEALTHCHECK without curl.
- demo/: every record has an id and an RFC 3339 `modified` in UTC, and only reserved addresses.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SECRET_EXAMPLE = ROOT / "deploy" / "secret.example.yaml"

STORAGE = "storage-service"
COLLECTION = "collection-service"


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, problems: list[str]) -> None:
        """One check: passes when `problems` is empty, else prints every problem."""
        if problems:
            self.failed += 1
            print(f"FAIL - {name}: " + "; ".join(problems))
        else:
            self.passed += 1
            print(f"ok - {name}")


# ---------------------------------------------------------------- Kubernetes


def load_k8s(checks: Checks) -> list[dict]:
    docs: list[dict] = []
    problems: list[str] = []
    files = sorted(K8S.glob("*.yaml"))
    if not files:
        problems.append(f"no *.yaml in {K8S.relative_to(ROOT)}")
    for path in files:
        rel = path.relative_to(ROOT)
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as error:
            problems.append(f"{rel} does not parse: {error}")
            continue
        for doc in loaded:
            if not isinstance(doc, dict):
                problems.append(f"{rel}: a document is not a mapping")
                continue
            if doc.get("kind") == "Kustomization":
                continue
            missing = [k for k in ("apiVersion", "kind") if not doc.get(k)]
            if not (doc.get("metadata") or {}).get("name"):
                missing.append("metadata.name")
            if missing:
                problems.append(f"{rel}: a {doc.get('kind', '?')} lacks {', '.join(missing)}")
            doc["__file__"] = str(rel)
            docs.append(doc)
    checks.check(f"{len(files)} manifest files in deploy/k8s parse into {len(docs)} resources", problems)
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def pod_spec(deployment: dict) -> dict:
    return ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}


def containers(deployment: dict) -> list[dict]:
    spec = pod_spec(deployment)
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])


def env_of(container: dict, name: str) -> dict | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return entry
    return None


def config_value(docs: list[dict], container: dict, key: str) -> tuple[str | None, str | None]:
    """(value, ConfigMap name) of `key` as the container sees it, from env or envFrom."""
    entry = env_of(container, key)
    if entry is not None:
        if "value" in entry:
            return entry["value"], None
        ref = (entry.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            for cm in find(docs, "ConfigMap", ref.get("name")):
                return (cm.get("data") or {}).get(ref.get("key")), ref.get("name")
        return None, None
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if not ref:
            continue
        for cm in find(docs, "ConfigMap", ref.get("name")):
            if key in (cm.get("data") or {}):
                return cm["data"][key], ref.get("name")
    return None, None


def check_probes(checks: Checks, deployment: dict) -> None:
    name = deployment["metadata"]["name"]
    problems = []
    for container in pod_spec(deployment).get("containers") or []:
        ports = {p.get("name") for p in container.get("ports") or []} | {
            p.get("containerPort") for p in container.get("ports") or []
        }
        for probe in ("readinessProbe", "livenessProbe"):
            get = ((container.get(probe) or {}).get("httpGet")) or {}
            if get.get("path") != "/health":
                problems.append(f"container {container.get('name')} has no {probe} on GET /health")
            elif get.get("port") not in ports:
                problems.append(f"{probe} of {container.get('name')} uses port {get.get('port')!r}, not a container port")
    checks.check(f"{name}: readiness and liveness probes on /health", problems)


def check_resources(checks: Checks, deployment: dict) -> None:
    name = deployment["metadata"]["name"]
    problems = []
    for container in containers(deployment):
        resources = container.get("resources") or {}
        for part in ("requests", "limits"):
            have = resources.get(part) or {}
            for res in ("cpu", "memory"):
                if not have.get(res):
                    problems.append(f"container {container.get('name')} lacks resources.{part}.{res}")
    checks.check(f"{name}: resource requests and limits on every container", problems)


def check_token(checks: Checks, deployment: dict) -> None:
    name = deployment["metadata"]["name"]
    problems = []
    for container in pod_spec(deployment).get("containers") or []:
        entry = env_of(container, "STORAGE_API_TOKEN")
        ref = ((entry or {}).get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            problems.append(f"container {container.get('name')} does not take STORAGE_API_TOKEN from a secretKeyRef")
        elif ref.get("optional"):
            problems.append(f"STORAGE_API_TOKEN of {container.get('name')} is optional: production must not run open")
    checks.check(f"{name}: STORAGE_API_TOKEN from a Secret", problems)


def check_service(checks: Checks, docs: list[dict], deployment: dict) -> None:
    name = deployment["metadata"]["name"]
    labels = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    ports = set()
    for container in pod_spec(deployment).get("containers") or []:
        for port in container.get("ports") or []:
            ports |= {port.get("name"), port.get("containerPort")}
    problems = []
    matching = [
        s
        for s in find(docs, "Service")
        if (s.get("spec") or {}).get("selector")
        and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
    ]
    if not matching:
        problems.append("no Service selects its pods")
    for service in matching:
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if target not in ports:
                problems.append(f"Service {service['metadata']['name']} targets port {target!r}, not a container port")
    checks.check(f"{name}: a Service selects it", problems)


def check_storage(checks: Checks, docs: list[dict]) -> None:
    deployments = find(docs, "Deployment", STORAGE)
    checks.check(f"Deployment {STORAGE} exists", [] if deployments else ["not found"])
    if not deployments:
        return
    deployment = deployments[0]
    spec = deployment.get("spec") or {}
    checks.check(
        f"{STORAGE}: replicas 1 (one SQLite writer)",
        [] if spec.get("replicas") == 1 else [f"replicas is {spec.get('replicas')!r}"],
    )
    strategy = (spec.get("strategy") or {}).get("type")
    checks.check(
        f"{STORAGE}: strategy Recreate",
        [] if strategy == "Recreate" else [f"strategy is {strategy!r}"],
    )

    problems = []
    claims = {c["metadata"]["name"] for c in find(docs, "PersistentVolumeClaim")}
    volumes = {
        v.get("name"): v["persistentVolumeClaim"].get("claimName")
        for v in pod_spec(deployment).get("volumes") or []
        if v.get("persistentVolumeClaim")
    }
    container = (pod_spec(deployment).get("containers") or [{}])[0]
    db_path, _ = config_value(docs, container, "DATABASE_PATH")
    if not db_path:
        problems.append("DATABASE_PATH is not set for the container")
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") in volumes]
    if not mounts:
        problems.append("no PersistentVolumeClaim is mounted")
    for mount in mounts:
        claim = volumes[mount["name"]]
        if claim not in claims:
            problems.append(f"claim {claim!r} is not defined in deploy/k8s")
        if mount.get("readOnly"):
            problems.append(f"{mount['mountPath']} is mounted read-only")
    if db_path and not any(db_path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
        problems.append(f"DATABASE_PATH {db_path} is not on a mounted claim")
    checks.check(f"{STORAGE}: database on a PersistentVolumeClaim", problems)

    check_probes(checks, deployment)
    check_resources(checks, deployment)
    check_token(checks, deployment)
    check_service(checks, docs, deployment)


def check_collection(checks: Checks, docs: list[dict]) -> None:
    deployments = find(docs, "Deployment", COLLECTION)
    checks.check(f"Deployment {COLLECTION} exists", [] if deployments else ["not found"])
    if not deployments:
        return
    deployment = deployments[0]
    container = (pod_spec(deployment).get("containers") or [{}])[0]

    problems = []
    url, config_map = config_value(docs, container, "STORAGE_SERVICE_URL")
    if not url:
        problems.append("STORAGE_SERVICE_URL is not set")
    elif not config_map:
        problems.append("STORAGE_SERVICE_URL does not come from a ConfigMap")
    else:
        match = re.fullmatch(r"http://([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)/?", url)
        services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
        if not match or match.group(1) not in services:
            problems.append(f"STORAGE_SERVICE_URL {url} does not name a Service of deploy/k8s")
        else:
            ports = {p.get("port") for p in services[match.group(1)]["spec"].get("ports") or []}
            if int(match.group(2)) not in ports:
                problems.append(f"STORAGE_SERVICE_URL port {match.group(2)} is not a port of {match.group(1)}")
    checks.check(f"{COLLECTION}: STORAGE_SERVICE_URL from ConfigMap {config_map or '?'} reaches storage", problems)

    entry = env_of(container, "INSTANCE_ID") or {}
    field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    checks.check(
        f"{COLLECTION}: INSTANCE_ID (lease owner) from the pod name",
        [] if field == "metadata.name" else ["INSTANCE_ID is not from fieldRef metadata.name"],
    )

    problems = []
    config_path, _ = config_value(docs, container, "COLLECTION_CONFIG")
    volumes = {v.get("name"): v for v in pod_spec(deployment).get("volumes") or []}
    found = False
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        ref = volume.get("configMap")
        if not ref or not config_path or not config_path.startswith(mount["mountPath"].rstrip("/") + "/"):
            continue
        key = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
        for cm in find(docs, "ConfigMap", ref.get("name")):
            text = (cm.get("data") or {}).get(key)
            if text is None:
                problems.append(f"ConfigMap {ref.get('name')} has no key {key}")
                continue
            found = True
            try:
                sources = json.loads(text).get("sources")
                if not sources or not all(s.get("id") and s.get("type") for s in sources):
                    problems.append(f"{key} lists no sources with id and type")
            except (json.JSONDecodeError, AttributeError) as error:
                problems.append(f"{key} in ConfigMap {ref.get('name')} is not valid JSON: {error}")
    if not found and not problems:
        problems.append(f"COLLECTION_CONFIG {config_path!r} is not a file of a mounted ConfigMap")
    checks.check(f"{COLLECTION}: sources file mounted from a ConfigMap", problems)

    check_probes(checks, deployment)
    check_resources(checks, deployment)
    check_token(checks, deployment)
    check_service(checks, docs, deployment)


def check_secret_example(checks: Checks, docs: list[dict]) -> None:
    problems = []
    try:
        secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
        keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
        name = secret["metadata"]["name"]
    except (OSError, yaml.YAMLError, KeyError, AttributeError) as error:
        checks.check("deploy/secret.example.yaml holds every required secret key", [str(error)])
        return
    for deployment in find(docs, "Deployment"):
        for container in containers(deployment):
            for entry in container.get("env") or []:
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if not ref or ref.get("optional"):
                    continue
                if ref.get("name") != name:
                    problems.append(f"{entry['name']} reads Secret {ref.get('name')}, the example is {name}")
                elif ref.get("key") not in keys:
                    problems.append(f"{entry['name']} needs key {ref.get('key')} missing from the example")
    checks.check("deploy/secret.example.yaml holds every required secret key", problems)


# ---------------------------------------------------------------- docker compose


def check_compose(checks: Checks) -> None:
    try:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        services = compose["services"]
        storage, collection = services["storage"], services["collection"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        checks.check("docker-compose.yml has services storage and collection", [str(error)])
        return
    named_volumes = set((compose.get("volumes") or {}).keys())

    def env(service: dict) -> dict:
        value = service.get("environment") or {}
        if isinstance(value, list):
            return dict(item.split("=", 1) if "=" in item else (item, None) for item in value)
        return value

    def volume_at(service: dict, target: str) -> str | None:
        for volume in service.get("volumes") or []:
            if isinstance(volume, str):
                parts = volume.split(":")
                if len(parts) >= 2 and parts[1] == target:
                    return parts[0]
            elif volume.get("target") == target:
                return volume.get("source")
        return None

    problems = []
    if volume_at(storage, "/data") not in named_volumes:
        problems.append("no named volume at /data")
    if not str(env(storage).get("DATABASE_PATH", "")).startswith("/data/"):
        problems.append("DATABASE_PATH is not under /data")
    if "ENVIRONMENT" not in env(storage):
        problems.append("ENVIRONMENT is not set")
    test = (storage.get("healthcheck") or {}).get("test") or []
    if "healthcheck" not in test or any("curl" in str(t) for t in test):
        problems.append("healthcheck does not use the binary's healthcheck sub-command")
    checks.check("compose storage: named database volume, ENVIRONMENT, healthcheck", problems)

    problems = []
    if env(collection).get("STORAGE_SERVICE_URL") != "http://storage:8000":
        problems.append("STORAGE_SERVICE_URL is not http://storage:8000")
    if "8001:8000" not in [str(p) for p in collection.get("ports") or []]:
        problems.append("port 8001:8000 is not published")
    depends = collection.get("depends_on") or {}
    if not isinstance(depends, dict) or (depends.get("storage") or {}).get("condition") != "service_healthy":
        problems.append("does not depend on storage being healthy")
    if volume_at(collection, "/data") not in named_volumes:
        problems.append("no named data volume at /data")
    config = str(env(collection).get("COLLECTION_CONFIG", ""))
    sources = re.sub(r"^\$\{[A-Z_]+:-(.*)\}$", r"\1", config)
    mounted = [
        (v.split(":")[0], v.split(":")[1]) for v in collection.get("volumes") or [] if isinstance(v, str) and v.startswith("./")
    ]
    host_file = next(
        (ROOT / src / sources[len(dst) + 1 :] for src, dst in mounted if sources.startswith(dst.rstrip("/") + "/")),
        None,
    )
    if host_file is None or not host_file.is_file():
        problems.append(f"COLLECTION_CONFIG {sources!r} is not a file of a bind mount")
    for key in ("STORAGE_API_TOKEN",):
        if not re.fullmatch(r"\$\{" + key + r":-[^}]*\}", str(env(collection).get(key, ""))):
            problems.append(f"{key} is not an optional ${{{key}:-}} from .env")
    checks.check("compose collection: storage URL, 8001:8000, healthy dependency, config and data volumes", problems)


# ---------------------------------------------------------------- TLS (k8s overlay, compose override)

K8S_TLS = K8S / "tls"


def merge_named(base: list, patch: list) -> list:
    """A strategic merge of lists of named entries (env, volumeMounts, volumes, containers)."""
    merged = [dict(item) for item in base or []]
    for item in patch or []:
        key = "mountPath" if "mountPath" in item and "name" not in item else "name"
        existing = next((m for m in merged if m.get(key) == item.get(key)), None)
        if existing is None:
            merged.append(item)
        else:
            for field, value in item.items():
                existing[field] = merge_value(existing.get(field), value)
    return merged


def merge_value(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge_value(base.get(key), value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) for i in base + patch):
        return merge_named(base, patch)
    return patch


def secret_file(spec: dict, container: dict, path: str) -> tuple[str | None, str | None]:
    """(Secret name, key) of the file at `path` in `container`, when it is a mounted Secret's item."""
    for mount in container.get("volumeMounts") or []:
        prefix = str(mount.get("mountPath", "")).rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = next((v for v in spec.get("volumes") or [] if v.get("name") == mount.get("name")), None)
        secret = (volume or {}).get("secret")
        if not secret:
            return None, None
        name = path[len(prefix) :]
        items = secret.get("items")
        if items is None:
            return secret.get("secretName"), name
        for item in items:
            if item.get("path") == name:
                return secret.get("secretName"), item.get("key")
        return None, None
    return None, None


def check_tls_overlay(checks: Checks, docs: list[dict]) -> None:
    problems: list[str] = []
    try:
        kustomization = yaml.safe_load((K8S_TLS / "kustomization.yaml").read_text())
        patches = [yaml.safe_load((K8S_TLS / p["path"]).read_text()) for p in kustomization.get("patches") or []]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        checks.check("deploy/k8s/tls: kustomization and patches parse", [str(error)])
        return
    if ".." not in (kustomization.get("resources") or []):
        problems.append("the overlay does not build on deploy/k8s (resources: [..])")
    deployments = {}
    for patch in patches:
        name = (patch.get("metadata") or {}).get("name")
        base = find(docs, "Deployment", name)
        if patch.get("kind") != "Deployment" or not base:
            problems.append(f"a patch targets {patch.get('kind')} {name!r}, not a Deployment of deploy/k8s")
            continue
        deployments[name] = merge_value(base[0], patch)
    checks.check("deploy/k8s/tls: builds on deploy/k8s and patches its Deployments", problems)

    def patched(name: str, problems: list[str]) -> tuple[dict, dict] | None:
        """(pod spec, first container) of the patched Deployment `name`."""
        if name not in deployments:
            problems.append(f"no patch of {name}")
            return None
        spec = pod_spec(deployments[name])
        return spec, (spec.get("containers") or [{}])[0]

    problems = []
    if found := patched(STORAGE, problems):
        spec, container = found
        for key in ("TLS_CERT_PATH", "TLS_KEY_PATH"):
            value = (env_of(container, key) or {}).get("value")
            secret, item = secret_file(spec, container, str(value or ""))
            if not value or not secret:
                problems.append(f"{key}={value!r} is not a file of a mounted Secret")
        for probe in ("readinessProbe", "livenessProbe"):
            if ((container.get(probe) or {}).get("httpGet") or {}).get("scheme") != "HTTPS":
                problems.append(f"{probe} does not speak HTTPS")
    checks.check("deploy/k8s/tls storage: certificate and key from a Secret, HTTPS probes", problems)

    problems = []
    if found := patched(COLLECTION, problems):
        spec, container = found
        url = str((env_of(container, "STORAGE_SERVICE_URL") or {}).get("value") or "")
        ports = {
            str(p.get("port")) for svc in find(docs, "Service", STORAGE) for p in (svc.get("spec") or {}).get("ports") or []
        }
        match = re.fullmatch(r"https://([a-z0-9.-]+):(\d+)", url)
        if not match or match.group(1).split(".")[0] != STORAGE or match.group(2) not in ports:
            problems.append(f"STORAGE_SERVICE_URL {url!r} is not https:// to a port of the {STORAGE} Service")
        ca = str((env_of(container, "STORAGE_CA_PATH") or {}).get("value") or "")
        secret, item = secret_file(spec, container, ca)
        if not secret:
            problems.append(f"STORAGE_CA_PATH {ca!r} is not a file of a mounted Secret")
        for volume in spec.get("volumes") or []:
            items = (volume.get("secret") or {}).get("items")
            if volume.get("secret") and (items is None or any(i.get("key") == "tls.key" for i in items)):
                problems.append(f"volume {volume.get('name')!r} gives the collection the server's private key")
    checks.check("deploy/k8s/tls collection: https:// storage URL, CA from a Secret, no server key", problems)


def check_compose_tls(checks: Checks) -> None:
    try:
        base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        override = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        checks.check("docker-compose.tls.yml parses with services", [str(error)])
        return
    problems = []
    for name, files in (("storage", ("TLS_CERT_PATH", "TLS_KEY_PATH")), ("collection", ("STORAGE_CA_PATH",))):
        service = dict(base.get(name) or {})
        patch = override.get(name) or {}
        environment = dict(service.get("environment") or {}) | dict(patch.get("environment") or {})
        volumes = [str(v) for v in (service.get("volumes") or []) + (patch.get("volumes") or [])]
        binds = [v.split(":") for v in volumes if v.startswith("./")]
        for key in files:
            path = str(environment.get(key, ""))
            if not any(path.startswith(b[1].rstrip("/") + "/") for b in binds):
                problems.append(f"{name}: {key}={path!r} is not in a bind-mounted folder")
        test = [str(t) for t in ((patch.get("healthcheck") or {}).get("test") or [])]
        if not any(t.startswith("https://") for t in test) or "--ca-path" not in test:
            problems.append(f"{name}: the healthcheck does not probe https:// with --ca-path")
        if name == "collection" and not str(environment.get("STORAGE_SERVICE_URL", "")).startswith("https://storage:"):
            problems.append("collection: STORAGE_SERVICE_URL is not https://storage:...")
    checks.check("docker-compose.tls.yml: certificates from ./certs, https:// between the services", problems)


# ---------------------------------------------------------------- Dockerfiles


def check_dockerfile(checks: Checks, path: Path, binary: str) -> None:
    rel = path.relative_to(ROOT)
    try:
        text = path.read_text()
    except OSError as error:
        checks.check(f"{rel}: multi-stage, slim, non-root, healthcheck", [str(error)])
        return
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    problems = []
    if len(froms) < 2 or not re.match(r"FROM swift:\S+ AS \w+", froms[0], re.I):
        problems.append("not a multi-stage build on an official swift image")
    if froms and "swift:" in froms[-1] and "slim" not in froms[-1]:
        problems.append(f"runtime stage is a full toolchain image: {froms[-1]}")
    if not any("--static-swift-stdlib" in l and binary in l for l in lines):
        problems.append(f"{binary} is not built with --static-swift-stdlib")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime does not switch to a non-root USER")
    health = [l for l in lines if l.upper().startswith("HEALTHCHECK ")]
    if not health or "healthcheck" not in health[-1].split("CMD", 1)[-1] or "curl" in health[-1]:
        problems.append("no HEALTHCHECK with the binary's healthcheck sub-command")
    checks.check(f"{rel}: multi-stage, slim, non-root, healthcheck", problems)


# ---------------------------------------------------------------- demo data

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?![\d.])")
HOST = re.compile(r"(?<![\w.-])((?:[a-z0-9-]+\.)+[a-z]{2,})(?![\w-])", re.I)
RESERVED = ("example.com", "example.org", "example.net")


def demo_records(path: Path) -> list[dict]:
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    value = json.loads(path.read_text())
    if isinstance(value, dict) and value.get("type") == "bundle":
        return value.get("objects") or []
    return value if isinstance(value, list) else [value]


def check_demo(checks: Checks) -> None:
    feeds = ROOT / "demo" / "feeds"
    problems = []
    count = 0
    for path in sorted(feeds.glob("*")):
        if path.suffix not in (".json", ".ndjson"):
            continue
        rel = path.relative_to(ROOT)
        try:
            records = demo_records(path)
        except json.JSONDecodeError as error:
            problems.append(f"{rel} is not valid JSON: {error}")
            continue
        for record in records:
            count += 1
            if not record.get("id"):
                problems.append(f"{rel}: a record has no id")
            modified = str(record.get("modified", ""))
            if not RFC3339_UTC.match(modified):
                problems.append(f"{rel}: {record.get('id')} modified {modified!r} is not RFC 3339 UTC")
            if record.get("type") == "indicator" and not re.fullmatch(r"indicator--[0-9a-f-]{36}", record["id"]):
                problems.append(f"{rel}: {record['id']} is not indicator--<uuid>")
        text = path.read_text()
        for ip in IPV4.findall(text):
            if not any(ipaddress.ip_address(ip) in net for net in DOC_NETS):
                problems.append(f"{rel}: {ip} is not in a documentation range")
        for host in HOST.findall(text):
            if "." in host and not host.lower().endswith(RESERVED) and not re.fullmatch(r"[\d.]+", host):
                # Skip file names and STIX/JSON tokens: only flag names used as indicator values.
                if re.search(r"['\"]" + re.escape(host) + r"['\"]|//" + re.escape(host), text):
                    problems.append(f"{rel}: {host} is not a reserved example domain")
    if count == 0:
        problems.append("no records in demo/feeds")
    checks.check(f"demo/feeds: {count} records with id and RFC 3339 modified, reserved addresses only", problems)

    problems = []
    for path in sorted((ROOT / "demo" / "config").glob("*.json")):
        try:
            sources = json.loads(path.read_text())["sources"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            problems.append(f"{path.name}: {error}")
            continue
        for source in sources:
            if source.get("lookback_seconds", 0) < 3650 * 86400:
                problems.append(f"{path.name}: {source.get('id')} lookback is under 3650 days")
    checks.check("demo/config: sources files parse, lookback 3650 days", problems)


def main() -> int:
    checks = Checks()
    docs = load_k8s(checks)
    check_storage(checks, docs)
    check_collection(checks, docs)
    check_secret_example(checks, docs)
    check_compose(checks)
    check_tls_overlay(checks, docs)
    check_compose_tls(checks)
    check_dockerfile(checks, ROOT / "Services" / "Storage" / "Dockerfile", "storage-service")
    check_dockerfile(checks, ROOT / "Services" / "Collection" / "Dockerfile", "collection-service")
    check_demo(checks)
    print(f"check_deploy: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
