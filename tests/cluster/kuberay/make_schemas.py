"""Rebuild the KubeRay schema files next to this script from a KubeRay git checkout (not run by the tests).

    git clone https://github.com/ray-project/kuberay /tmp/kuberay
    python tests/cluster/kuberay/make_schemas.py /tmp/kuberay v1.2.2 v1.7.0

For each tag it reads ``ray-operator/config/crd/bases/ray.io_rayjobs.yaml`` and ``ray.io_rayservices.yaml``,
keeps only the ``v1`` version's ``openAPIV3Schema``, drops every ``description`` (documentation, never a
constraint), and stores each subtree that occurs more than once (the pod template alone occurs five times)
once under ``$defs``, replaced by a ``$ref``. Nothing else changes: a ``$ref`` validates exactly what the
subtree it replaces did. The sha256 of each source file is recorded so the result can be checked against
the upstream tag.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
    "RayService": "ray-operator/config/crd/bases/ray.io_rayservices.yaml",
}
MIN_SHARED = 800  # smallest subtree (canonical JSON characters) worth a $ref


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _strip_descriptions(obj):
    if isinstance(obj, dict):
        return {k: _strip_descriptions(v) for k, v in obj.items() if k != "description"}
    if isinstance(obj, list):
        return [_strip_descriptions(v) for v in obj]
    return obj


def _subtrees(obj, counts: Counter) -> None:
    for child in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
        if isinstance(child, dict) and "$ref" not in child:
            text = _canon(child)
            if len(text) >= MIN_SHARED:
                counts[text] += 1
        _subtrees(child, counts)


def _replace(obj, text: str, ref: dict):
    if isinstance(obj, dict):
        return {
            k: ref if isinstance(v, dict) and _canon(v) == text else _replace(v, text, ref) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [ref if isinstance(v, dict) and _canon(v) == text else _replace(v, text, ref) for v in obj]
    return obj


def factor(kinds: dict) -> tuple[dict, dict]:
    """Move every repeated subtree (largest first) into ``$defs``; returns ``(kinds, defs)``."""
    defs: dict = {}
    while True:
        counts: Counter = Counter()
        _subtrees(kinds, counts)
        for body in defs.values():
            _subtrees(body, counts)
        repeated = [t for t, n in counts.items() if n > 1]
        if not repeated:
            return kinds, defs
        text = max(repeated, key=len)
        name = "s" + hashlib.sha256(text.encode()).hexdigest()[:12]
        ref = {"$ref": f"#/$defs/{name}"}
        kinds = _replace(kinds, text, ref)
        defs = {k: _replace(v, text, ref) for k, v in defs.items()}
        defs[name] = json.loads(text)


def expand(obj, defs: dict):
    """The inverse of ``factor``: every ``$ref`` replaced by its subtree."""
    if isinstance(obj, dict):
        if "$ref" in obj:
            return expand(defs[obj["$ref"].rsplit("/", 1)[1]], defs)
        return {k: expand(v, defs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand(v, defs) for v in obj]
    return obj


def build(repo: Path, tag: str) -> dict:
    kinds, sources = {}, {}
    for kind, path in CRDS.items():
        raw = subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"], check=True, capture_output=True).stdout
        crd = yaml.safe_load(raw)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        kinds[kind] = _strip_descriptions(v1["schema"]["openAPIV3Schema"])
        sources[kind] = {"path": path, "sha256": hashlib.sha256(raw).hexdigest()}
    factored, defs = factor(kinds)
    for kind, schema in kinds.items():
        assert _canon(expand(factored[kind], defs)) == _canon(schema), f"{tag} {kind}: factoring changed the schema"
    return {
        "provenance": {
            "repository": "https://github.com/ray-project/kuberay",
            "tag": tag,
            "license": "Apache-2.0 (Copyright the KubeRay authors; https://github.com/ray-project/kuberay/blob/master/LICENSE)",
            "files": sources,
            "changes": "v1 openAPIV3Schema only; descriptions removed; repeated subtrees moved to $defs (by make_schemas.py)",
        },
        "kinds": factored,
        "$defs": defs,
    }


def main(argv: list[str]) -> None:
    repo, tags = Path(argv[0]), argv[1:]
    for tag in tags:
        doc = build(repo, tag)
        out = HERE / f"crd-{tag}.json"
        out.write_text(json.dumps(doc, sort_keys=True, indent=1) + "\n")
        print(f"{out.name}: {out.stat().st_size} bytes, {len(doc['$defs'])} shared subtrees")


if __name__ == "__main__":
    main(sys.argv[1:])
