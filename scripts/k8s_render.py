#!/usr/bin/env python3
"""Builds deploy/k8s/base and every overlay in deploy/ as `kubectl kustomize` would, for what they use.

Overlays hold partial objects (patches), which a schema check or checkov would judge as broken
Deployments, so scripts/lint-deploy.sh checks the built objects instead:
    python3 scripts/k8s_render.py OUT_DIR
writes OUT_DIR/<dir>.yaml per folder with a kustomization.yaml (k8s-base.yaml, k8s-tls.yaml, ...) and
exits 1 with the reason when a kustomization uses more than this supports: `resources` (files and
folders), `patches` with only a `path` (strategic merge, targeted by kind and name, with `$patch: delete`
of a whole object or of a list item, and a null value deleting a field) and
`labels[].pairs` (on metadata.labels only); `images` is not applied (the manifests name the same
tags). A YAML file of such a folder that the kustomization
does not name is an error too, so no manifest escapes the checks. scripts/check_deploy.py imports
`render` and `overlays`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The base every overlay is laid over: kustomize refuses an overlay inside the folder it builds on.
K8S = DEPLOY / "k8s" / "base"
# The merge key of a list of objects in a strategic merge patch, where it is not `name`.
MERGE_KEYS = {"volumeMounts": "mountPath", "ports": "containerPort"}


class RenderError(Exception):
    pass


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def merge(base, patch, field: str = ""):
    """A strategic merge: maps merge by key (a null deletes the key), lists of objects by their merge key, the rest
    is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = {**base, **{k: merge(base.get(k), v, k) for k, v in patch.items()}}
        return {k: v for k, v in merged.items() if not (k in patch and patch[k] is None)}
    key = MERGE_KEYS.get(field, "name")
    keyed = isinstance(base, list) and isinstance(patch, list)
    if keyed and all(isinstance(i, dict) and key in i for i in base + patch):
        merged = list(base)
        for item in patch:
            at = next((n for n, m in enumerate(merged) if m[key] == item[key]), None)
            if item.get("$patch") == "delete":
                if at is None:
                    raise RenderError(f"$patch: delete of {field} {item[key]!r}, which is not there")
                del merged[at]
            elif at is None:
                merged.append(item)
            else:
                merged[at] = merge(merged[at], item, field)
        return merged
    return patch


def render(folder: Path) -> list[dict]:
    """The objects that the kustomization in `folder` builds."""
    rel = folder.relative_to(ROOT)
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "patches", "labels", "images"}
    if unsupported:
        raise RenderError(f"{rel}/kustomization.yaml uses {', '.join(sorted(unsupported))}, unknown to k8s_render.py")
    named: set[Path] = set()
    docs: list[dict] = []
    for resource in kustomization.get("resources") or []:
        path = (folder / resource).resolve()
        if path.is_dir() and folder.resolve().is_relative_to(path):
            raise RenderError(
                f"{rel}: resource {resource!r} contains this folder, which kustomize refuses (cycle detected); "
                "lay overlays beside the base (resources: [../base])"
            )
        named.add(path)
        docs += render(path) if path.is_dir() else load_docs(path)
    for entry in kustomization.get("patches") or []:
        if set(entry) != {"path"}:
            raise RenderError(f"{rel}: patch {entry} is not a plain strategic merge patch file")
        path = (folder / entry["path"]).resolve()
        named.add(path)
        for patch in load_docs(path):
            name = (patch.get("metadata") or {}).get("name")
            at = [n for n, d in enumerate(docs) if d.get("kind") == patch.get("kind") and d["metadata"]["name"] == name]
            if not at:
                raise RenderError(f"{rel}/{entry['path']} patches {patch.get('kind')} {name!r}, which is not built")
            if patch.get("$patch") == "delete":
                del docs[at[0]]
            else:
                docs[at[0]] = merge(docs[at[0]], patch)
    for entry in kustomization.get("labels") or []:
        for doc in docs:
            doc["metadata"] = merge(doc.get("metadata") or {}, {"labels": dict(entry.get("pairs") or {})})
    stray = sorted(p.name for p in folder.glob("*.y*ml") if p.name != "kustomization.yaml" and p.resolve() not in named)
    if stray:
        raise RenderError(f"{rel}/kustomization.yaml does not name {', '.join(stray)}")
    return docs


def overlays() -> list[Path]:
    """Every folder under deploy/ that holds a kustomization.yaml: deploy/k8s/base and its overlays."""
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    try:
        for folder in overlays():
            target = out / ("-".join(folder.relative_to(DEPLOY).parts) + ".yaml")
            target.write_text(yaml.safe_dump_all(render(folder), sort_keys=False))
            print(f"{folder.relative_to(ROOT)} -> {target.name}")
    except (OSError, yaml.YAMLError, RenderError, KeyError, TypeError, AttributeError) as error:
        print(f"k8s_render: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
