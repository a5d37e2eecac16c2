#!/usr/bin/env python3
"""The project's own rules for its deployment files, which no generic linter can know.

Run by scripts/lint-deploy.sh after yamllint, kubernetes-validate, checkov and hadolint; alone with
`python3 scripts/check_deploy.py` (PyYAML). Prints `ok - ...` or `FAIL - ...: why` per check, exits
1 when any failed. On deploy/k8s/base and every overlay, as scripts/k8s_render.py builds them:
- a storage-service on SQLite (DATABASE_PATH; deploy/k8s/base must be) is one writer: 1 replica,
  Recreate, the database on a writable mount of a PersistentVolumeClaim of the build; on PostgreSQL
  (DATABASE_URL; deploy/k8s/postgres must be) it is several stateless replicas: DATABASE_URL from a
  required Secret key, RollingUpdate with maxUnavailable 0, a PodDisruptionBudget, no claim;
- both Deployments probe readiness and liveness on GET /health at a container port and take
  STORAGE_API_TOKEN from a required Secret key; deploy/secret.example.yaml holds every required key;
- the collection's STORAGE_SERVICE_URL names a port of the storage-service Service, which selects
  the storage pods; INSTANCE_ID (lease owner) is the pod name; the sources file is JSON in a
  mounted ConfigMap;
- HTTPS (TLS_CERT_PATH set; deploy/k8s/tls must): certificate and key are files of a mounted Secret,
  probes speak HTTPS, the collection calls https:// and trusts STORAGE_CA_PATH from a Secret
  volume without the server's key.
Then docker-compose.yml (also its postgres profile: PostgreSQL with a volume and pg_isready, two storage
replicas on it behind deploy/compose/storage-lb.conf, a leased collection) with docker-compose.tls.yml
laid over it, and each Dockerfile's HEALTHCHECK.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from k8s_render import K8S, ROOT, RenderError, overlays, render

STORAGE, COLLECTION = "storage-service", "collection-service"
counts = {"passed": 0, "failed": 0}


def check(name: str, problems: list[str]) -> None:
    counts["failed" if problems else "passed"] += 1
    print(f"FAIL - {name}: " + "; ".join(problems) if problems else f"ok - {name}")


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and name in (None, d["metadata"]["name"])]


def pod(docs: list[dict], name: str) -> tuple[dict, dict]:
    """(pod spec, first container) of Deployment `name`, empty when it is missing."""
    spec = next((d["spec"]["template"]["spec"] for d in find(docs, "Deployment", name)), {})
    return spec, (spec.get("containers") or [{}])[0]


def env(docs: list[dict], container: dict, key: str) -> dict:
    """The env entry of `key`, else {"value": ...} from a ConfigMap of envFrom, else {}."""
    for entry in container.get("env") or []:
        if entry["name"] == key:
            return entry
    for source in container.get("envFrom") or []:
        for cm in find(docs, "ConfigMap", (source.get("configMapRef") or {}).get("name")):
            if key in (cm.get("data") or {}):
                return {"value": cm["data"][key]}
    return {}


def value(docs: list[dict], container: dict, key: str) -> str:
    return str(env(docs, container, key).get("value") or "")


def mounted(spec: dict, container: dict, path: str, source: str) -> tuple[dict, str] | None:
    """(volume, key) when `path` is a file of a mounted volume of type `source` (secret, configMap...)."""
    for mount in container.get("volumeMounts") or []:
        prefix = mount["mountPath"].rstrip("/") + "/"
        volume = next((v for v in spec.get("volumes") or [] if v["name"] == mount["name"]), {})
        if path.startswith(prefix) and source in volume:
            items = {i["path"]: i["key"] for i in volume[source].get("items") or []}
            name = path[len(prefix) :]
            return (volume, items.get(name, name)) if not items or name in items else None
    return None


def check_postgres(rel: Path, docs: list[dict], deployment: dict, spec: dict, storage: dict, url: dict) -> None:
    """Storage on PostgreSQL: stateless replicas, rolled one at a time, a budget for disruptions."""
    ref = (url.get("valueFrom") or {}).get("secretKeyRef")
    problems = [] if ref and not ref.get("optional") else ["DATABASE_URL is not from a required secretKeyRef"]
    replicas = deployment["spec"].get("replicas") or 1
    if replicas < 2:
        problems.append(f"replicas is {replicas}, not several")
    strategy = deployment["spec"].get("strategy") or {}
    if strategy.get("type") != "RollingUpdate" or (strategy.get("rollingUpdate") or {}).get("maxUnavailable") != 0:
        problems.append("strategy is not RollingUpdate with maxUnavailable 0")
    labels = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    budgets = [
        b for b in find(docs, "PodDisruptionBudget")
        if ((b["spec"].get("selector") or {}).get("matchLabels") or {}).items() <= labels.items()
    ]
    if not budgets or not 1 <= (budgets[0]["spec"].get("minAvailable") or 0) < replicas:
        problems.append("no PodDisruptionBudget with 1 <= minAvailable < replicas selects the storage pods")
    claims = [v for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v]
    if claims:
        problems.append(f"the stateless storage still mounts a claim: {claims[0]['name']}")
    check(f"{rel} {STORAGE}: PostgreSQL replicas (DATABASE_URL from a Secret, RollingUpdate, budget)", problems)


def check_build(folder: Path, docs: list[dict], secret: dict) -> None:
    rel = folder.relative_to(ROOT)
    spec, storage = pod(docs, STORAGE)
    deployment = next(iter(find(docs, "Deployment", STORAGE)), {"spec": {}})
    db = value(docs, storage, "DATABASE_PATH")
    database_url = env(docs, storage, "DATABASE_URL")
    if database_url or folder.name == "postgres":
        check_postgres(rel, docs, deployment, spec, storage, database_url)
    elif db or folder == K8S:
        problems = [] if db else ["DATABASE_PATH is not set"]
        if deployment["spec"].get("replicas") != 1:
            problems.append(f"replicas is {deployment['spec'].get('replicas')!r}")
        if (deployment["spec"].get("strategy") or {}).get("type") != "Recreate":
            problems.append(f"strategy is {(deployment['spec'].get('strategy') or {}).get('type')!r}")
        volume = mounted(spec, storage, db, "persistentVolumeClaim")
        claim = volume and volume[0]["persistentVolumeClaim"]["claimName"]
        if not volume:
            problems.append(f"DATABASE_PATH {db!r} is not on a mounted PersistentVolumeClaim")
        elif not find(docs, "PersistentVolumeClaim", claim):
            problems.append(f"claim {claim!r} is not defined in {rel}")
        if any(m.get("readOnly") and db.startswith(m["mountPath"]) for m in storage.get("volumeMounts") or []):
            problems.append("the database is mounted read-only")
        check(f"{rel} {STORAGE}: one SQLite writer (replicas 1, Recreate), database on a claim", problems)

    problems = []
    keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
    for name in (STORAGE, COLLECTION):
        container = pod(docs, name)[1]
        ports = {p.get(k) for p in container.get("ports") or [] for k in ("name", "containerPort")}
        for probe in ("readinessProbe", "livenessProbe"):
            get = (container.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != "/health" or get.get("port") not in ports:
                problems.append(f"{name} has no {probe} on GET /health at a container port")
        token = (env(docs, container, "STORAGE_API_TOKEN").get("valueFrom") or {}).get("secretKeyRef")
        if not token or token.get("optional"):
            problems.append(f"{name} does not take STORAGE_API_TOKEN from a required secretKeyRef")
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            known = ref and ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
            if ref and not ref.get("optional") and not known:
                problems.append(f"{entry['name']} needs key {ref['key']} of Secret {ref['name']}, not in the example")
    check(f"{rel}: probes on /health, STORAGE_API_TOKEN and credentials from deploy/secret.example.yaml", problems)

    spec_c, collection = pod(docs, COLLECTION)
    tls = bool(value(docs, storage, "TLS_CERT_PATH")) or folder.name == "tls"
    scheme = "https" if tls else "http"
    url = value(docs, collection, "STORAGE_SERVICE_URL")
    match = re.fullmatch(r"(https?)://([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)/?", url)
    service = next(iter(find(docs, "Service", match and match[2])), {"spec": {}})
    labels = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    problems = []
    if not match or match[1] != scheme or match[2] != STORAGE:
        problems.append(f"STORAGE_SERVICE_URL {url!r} is not {scheme}://{STORAGE}:PORT")
    elif int(match[3]) not in {p["port"] for p in service["spec"].get("ports") or []}:
        problems.append(f"STORAGE_SERVICE_URL port {match[3]} is not a port of the Service {STORAGE}")
    elif not service["spec"].get("selector") or service["spec"]["selector"].items() - labels.items():
        problems.append(f"the Service {STORAGE} does not select the storage pods")
    field = (env(docs, collection, "INSTANCE_ID").get("valueFrom") or {}).get("fieldRef") or {}
    if field.get("fieldPath") != "metadata.name":
        problems.append("INSTANCE_ID is not from fieldRef metadata.name")
    config = value(docs, collection, "COLLECTION_CONFIG")
    file = mounted(spec_c, collection, config, "configMap")
    cm = next(iter(find(docs, "ConfigMap", file and file[0]["configMap"]["name"])), {})
    try:
        sources = json.loads((cm.get("data") or {})[file[1]])["sources"]
        if not sources or not all(s.get("id") and s.get("type") for s in sources):
            problems.append(f"{config} lists no sources with id and type")
    except (TypeError, KeyError, json.JSONDecodeError) as error:
        problems.append(f"COLLECTION_CONFIG {config!r} is not valid JSON sources of a mounted ConfigMap: {error!r}")
    check(f"{rel} {COLLECTION}: storage URL reaches the storage pods, INSTANCE_ID, sources file", problems)

    if not tls:
        return
    problems = []
    for key in ("TLS_CERT_PATH", "TLS_KEY_PATH"):
        if not mounted(spec, storage, value(docs, storage, key) or "-", "secret"):
            problems.append(f"{key}={value(docs, storage, key)!r} is not a file of a mounted Secret")
    for probe in ("readinessProbe", "livenessProbe"):
        if ((storage.get(probe) or {}).get("httpGet") or {}).get("scheme") != "HTTPS":
            problems.append(f"{probe} does not speak HTTPS")
    ca = value(docs, collection, "STORAGE_CA_PATH")
    if not mounted(spec_c, collection, ca or "-", "secret"):
        problems.append(f"STORAGE_CA_PATH {ca!r} is not a file of a mounted Secret")
    for volume in spec_c.get("volumes") or []:
        items = (volume.get("secret") or {}).get("items")
        if "secret" in volume and (items is None or any(i["key"] == "tls.key" for i in items)):
            problems.append(f"volume {volume['name']!r} gives the collection the server's private key")
    check(f"{rel}: HTTPS, certificate and key from a Secret, HTTPS probes, collection trusts the CA only", problems)


def check_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    override = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"]
    storage, collection = compose["services"]["storage"], compose["services"]["collection"]
    env_s, env_c = storage.get("environment") or {}, collection.get("environment") or {}
    named = set(compose.get("volumes") or {})

    def at(service: dict, target: str) -> str | None:
        return next((v.split(":")[0] for v in service.get("volumes") or [] if v.split(":")[1:2] == [target]), None)

    problems = [] if at(storage, "/data") in named else ["no named volume at /data"]
    if not str(env_s.get("DATABASE_PATH", "")).startswith("/data/"):
        problems.append("DATABASE_PATH is not under /data")
    if "ENVIRONMENT" not in env_s:
        problems.append("ENVIRONMENT is not set")
    test = (storage.get("healthcheck") or {}).get("test") or []
    if "healthcheck" not in test or any("curl" in str(t) for t in test):
        problems.append("healthcheck does not use the binary's healthcheck sub-command")
    check("compose storage: named database volume, ENVIRONMENT, healthcheck", problems)

    problems = [] if env_c.get("STORAGE_SERVICE_URL") == "http://storage:8000" else ["STORAGE_SERVICE_URL is wrong"]
    if "8001:8000" not in [str(p) for p in collection.get("ports") or []]:
        problems.append("port 8001:8000 is not published")
    if ((collection.get("depends_on") or {}).get("storage") or {}).get("condition") != "service_healthy":
        problems.append("does not depend on storage being healthy")
    if at(collection, "/data") not in named:
        problems.append("no named data volume at /data")
    config = re.sub(r"^\$\{[A-Z_]+:-(.*)\}$", r"\1", str(env_c.get("COLLECTION_CONFIG", "")))
    binds = [v.split(":")[:2] for v in collection.get("volumes") or [] if v.startswith("./")]
    if not any(config.startswith(to + "/") and (ROOT / host / config[len(to) + 1 :]).is_file() for host, to in binds):
        problems.append(f"COLLECTION_CONFIG {config!r} is not a file of a bind mount")
    if not re.fullmatch(r"\$\{STORAGE_API_TOKEN:-[^}]*\}", str(env_c.get("STORAGE_API_TOKEN", ""))):
        problems.append("STORAGE_API_TOKEN is not an optional ${STORAGE_API_TOKEN:-} from .env")
    check("compose collection: storage URL, 8001:8000, healthy dependency, config and data volumes", problems)

    services = compose["services"]
    pg = {name: service for name, service in services.items() if "postgres" in (service.get("profiles") or [])}
    problems = [] if at(pg.get("postgres") or {}, "/var/lib/postgresql/data") in named else ["postgres has no named volume"]
    if "pg_isready" not in str(((pg.get("postgres") or {}).get("healthcheck") or {}).get("test")):
        problems.append("postgres has no pg_isready healthcheck")
    replicas = [n for n, svc in pg.items() if "@postgres:5432/" in str((svc.get("environment") or {}).get("DATABASE_URL"))]
    if len(replicas) < 2:
        problems.append(f"{len(replicas)} storage replicas on postgres, not 2")
    for name in replicas:
        if ((pg[name].get("depends_on") or {}).get("postgres") or {}).get("condition") != "service_healthy":
            problems.append(f"{name} does not wait for postgres to be healthy")
    balancer = (ROOT / "deploy" / "compose" / "storage-lb.conf").read_text()
    problems += [f"storage-lb.conf does not name {n}" for n in replicas if f"server {n}:8000" not in balancer]
    collectors = [svc for svc in pg.values() if (svc.get("environment") or {}).get("STORAGE_SERVICE_URL")]
    if not collectors or any(c["environment"]["STORAGE_SERVICE_URL"] != "http://storage-lb:8000" for c in collectors):
        problems.append("the profile's collection does not call http://storage-lb:8000")
    if any(str(c["environment"].get("REQUIRE_LEASE")) != "true" for c in collectors):
        problems.append("the profile's collection does not set REQUIRE_LEASE=true")
    check("compose profile postgres: volume and healthcheck, 2 replicas behind storage-lb, leased collection", problems)

    problems = []
    for name, files in (("storage", ("TLS_CERT_PATH", "TLS_KEY_PATH")), ("collection", ("STORAGE_CA_PATH",))):
        service, patch = compose["services"][name], override.get(name) or {}
        environment = (service.get("environment") or {}) | (patch.get("environment") or {})
        volumes = (service.get("volumes") or []) + (patch.get("volumes") or [])
        binds = [v.split(":")[1] for v in volumes if v.startswith("./")]
        for key in files:
            if not any(str(environment.get(key, "")).startswith(b.rstrip("/") + "/") for b in binds):
                problems.append(f"{name}: {key}={environment.get(key)!r} is not in a bind-mounted folder")
        test = [str(t) for t in (patch.get("healthcheck") or {}).get("test") or []]
        if not any(t.startswith("https://") for t in test) or "--ca-path" not in test:
            problems.append(f"{name}: the healthcheck does not probe https:// with --ca-path")
    if not str(override["collection"]["environment"].get("STORAGE_SERVICE_URL")).startswith("https://storage:"):
        problems.append("collection: STORAGE_SERVICE_URL is not https://storage:...")
    check("docker-compose.tls.yml: certificates from ./certs, https:// between the services", problems)


def main() -> int:
    secret = yaml.safe_load((ROOT / "deploy" / "secret.example.yaml").read_text())
    folders = overlays()
    if K8S not in folders:
        check("deploy/k8s/base/kustomization.yaml exists", ["not found"])
    for folder in folders:
        try:
            check_build(folder, render(folder), secret)
        except (OSError, yaml.YAMLError, RenderError, KeyError, TypeError, AttributeError) as error:
            check(f"{folder.relative_to(ROOT)}: builds", [f"{type(error).__name__}: {error}"])
    try:
        check_compose()
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, IndexError) as error:
        check("docker-compose.yml and docker-compose.tls.yml have services storage and collection", [repr(error)])
    for service in ("storage", "collection"):
        path = ROOT / "Services" / service.capitalize() / "Dockerfile"
        health = re.findall(r"^HEALTHCHECK .*?CMD (.*)$", re.sub(r"\\\n", " ", path.read_text()), re.M)
        check(
            f"{path.relative_to(ROOT)}: HEALTHCHECK runs the binary's healthcheck (the image has no curl)",
            [] if health and f'"/app/{service}-service", "healthcheck"' in health[-1] else ["no such HEALTHCHECK"],
        )
    print(f"check_deploy: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
