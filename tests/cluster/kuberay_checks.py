"""What KubeRay would make of a manifest, offline: its CRD schemas, and the rules its controller enforces.

``schema_problems`` validates a RayJob or RayService against the ``openAPIV3Schema`` of KubeRay's own CRDs
(the copies in ``kuberay/``, see its README), with unknown fields counted as errors: on a cluster they are
pruned away silently or, under ``kubectl apply``'s default strict field validation, refused.

``controller_problems`` checks what the CRD schema cannot express and KubeRay's controller (read from
ray-operator/controllers/ray in KubeRay v1.2.2 and v1.7.0) rejects or silently gets wrong: the head
Service it builds from the head container's ports, resource name limits, the RayJob shutdown and retry
fields, worker-group replica bounds, plus the pod-level rules Kubernetes applies when KubeRay creates the
pods (volume mounts that name a volume, valid port names).

``serve_problems`` checks a Ray Serve config with Ray's own ``ServeDeploySchema``, again counting unknown
fields as errors (Serve drops them silently), and the app's ``args`` and ``user_config`` with the scorer's
own argument models.

Each returns a list of ``"where: what"`` strings, empty when all is well.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import typing
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

KUBERAY_DIR = Path(__file__).resolve().parent / "kuberay"
# The oldest KubeRay the manifests support (backoffLimit and submissionMode arrive in 1.2) and the newest.
KUBERAY_TAGS = ("v1.2.2", "v1.7.0")

# KubeRay's names and defaults for the head Service ports (ray-operator/controllers/ray/utils/constant.go).
DEFAULT_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}
METRICS_PORT = ("metrics", 8080)
# RayCluster names are limited to 53 characters; a RayJob's or RayService's cluster gets a 6-character suffix.
MAX_NAME = 53 - 6
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Submission modes that every KubeRay from the oldest tag to the newest accepts.
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode")

# The root `metadata` is an unchecked object in the CRD (the API server validates ObjectMeta itself); these
# are the ObjectMeta fields a manifest may set, so a misspelt one fails here too.
_OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def _strict(node):
    """Unknown fields become errors: ``additionalProperties: false`` wherever a schema lists its properties."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def crd_document(tag: str) -> dict:
    return json.loads((KUBERAY_DIR / f"crd-{tag}.json").read_text())


@functools.cache
def _validator(tag: str, kind: str) -> Draft202012Validator:
    doc = crd_document(tag)
    schema = copy.deepcopy(doc["kinds"][kind])
    schema["properties"]["metadata"] = _OBJECT_META
    schema = _strict({**schema, "$defs": doc["$defs"]})
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def cel_fields(tag: str, kind: str) -> list[tuple[str, ...]]:
    """Paths (``*`` for list items) of the fields whose CRD schema carries CEL rules
    (``x-kubernetes-validations``), which jsonschema cannot evaluate."""
    doc = crd_document(tag)
    out = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        if "$ref" in node:
            node = doc["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if "x-kubernetes-validations" in node:
            out.append(path)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, (*path, name))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "*"))

    walk(doc["kinds"][kind], ())
    return out


def has_field(obj, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        return isinstance(obj, list) and any(has_field(item, rest) for item in obj)
    return isinstance(obj, dict) and head in obj and has_field(obj[head], rest)


def _where(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(root)"


def schema_problems(manifest: dict, tag: str) -> list[str]:
    kind = manifest.get("kind")
    if manifest.get("apiVersion") != "ray.io/v1" or kind not in ("RayJob", "RayService"):
        return [f"(root): not a ray.io/v1 RayJob or RayService: {manifest.get('apiVersion')} {kind}"]
    errors = sorted(_validator(tag, kind).iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"KubeRay {tag} schema: {_where(e.absolute_path)}: {e.message}" for e in errors]


# ----------------------------------------------------------------------------------------------------------
# The controller's rules


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return spec["rayClusterSpec"] if manifest["kind"] == "RayJob" else spec["rayClusterConfig"]


def groups(manifest: dict) -> list[tuple[str, dict]]:
    """``(label, group)`` for the head group and every worker group."""
    spec = cluster_spec(manifest)
    out = [("head", spec["headGroupSpec"])]
    out += [(f"worker group {g.get('groupName')!r}", g) for g in spec.get("workerGroupSpecs") or []]
    return out


def head_service_ports(manifest: dict) -> dict[str, int]:
    """The ports of the head Service, as KubeRay's ``getServicePorts`` builds them: the head (first)
    container's ports by name (unnamed ones as ``<port>-port``), or the defaults when it declares none;
    then ``metrics`` when missing."""
    container = cluster_spec(manifest)["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p.get("name") or f"{p['containerPort']}-port": p["containerPort"] for p in container.get("ports") or []}
    if not ports:
        ports = dict(DEFAULT_HEAD_PORTS)
    ports.setdefault(*METRICS_PORT)
    return ports


def serve_config_of(manifest: dict) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def _port_problems(manifest: dict) -> list[str]:
    out = []
    ports = head_service_ports(manifest)
    params = cluster_spec(manifest)["headGroupSpec"].get("rayStartParams") or {}
    # The RayJob controller submits the job, and the RayService controller the Serve config, through the
    # head Service's port named "dashboard": without it they stop at "dashboard port is not found".
    want = {
        "dashboard": int(params.get("dashboard-port", DEFAULT_HEAD_PORTS["dashboard"])),
        "gcs-server": int(params.get("port", DEFAULT_HEAD_PORTS["gcs-server"])),  # workers join through it
    }
    for name, number in want.items():
        if name not in ports:
            out.append(
                f"head Service: no port named {name!r} (it has {sorted(ports)}): KubeRay uses the default ports only when the head container declares none"
            )
        elif ports[name] != number:
            out.append(f"head Service: port {name!r} is {ports[name]} but Ray listens on {number}")
    if manifest["kind"] == "RayService":
        serving = {n: p for n, p in ports.items() if n == "serve" or n.startswith("serve-")}
        http_port = (serve_config_of(manifest).get("http_options") or {}).get("port", DEFAULT_HEAD_PORTS["serve"])
        if not serving and not manifest["spec"].get("serveService"):
            out.append("head Service: no port named 'serve' (or 'serve-*'): KubeRay creates no Serve Service")
        elif "serve" in serving and serving["serve"] != http_port:
            out.append(
                f"head Service: port 'serve' is {serving['serve']} but serveConfigV2 http_options.port is {http_port}"
            )
    return out


def _pod_problems(label: str, group: dict) -> list[str]:
    """What Kubernetes rejects when KubeRay creates the group's pods."""
    out = []
    pod = group["template"].get("spec") or {}
    volumes = [v["name"] for v in pod.get("volumes") or []]
    if len(volumes) != len(set(volumes)):
        out.append(f"{label}: duplicate volume names {volumes}")
    containers = pod.get("containers") or []
    if not containers:
        out.append(f"{label}: no container (KubeRay runs Ray in the first one)")
    for c in containers:
        for m in c.get("volumeMounts") or []:
            if m["name"] not in volumes:
                out.append(
                    f"{label}: container {c.get('name')!r} mounts {m['name']!r}, which is not a volume of the pod"
                )
        for p in c.get("ports") or []:
            name = p.get("name")
            if name is not None and not (
                len(name) <= 15
                and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
                and "--" not in name
                and re.search("[a-z]", name)
            ):
                out.append(f"{label}: container port name {name!r} is not a valid IANA service name")
    return out


def _int(value) -> int | None:
    """An integer field's value; ``None`` when missing or mistyped (the schema check reports those)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def controller_problems(manifest: dict) -> list[str]:
    kind, spec = manifest["kind"], manifest["spec"]
    name = manifest["metadata"]["name"]
    out = []
    if len(name) > MAX_NAME:
        out.append(f"metadata.name: {kind} name {name!r} is {len(name)} characters; KubeRay allows at most {MAX_NAME}")
    if not DNS_1035_LABEL.match(name):
        out.append(
            f"metadata.name: {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)"
        )

    if kind == "RayJob":
        shutdown = spec.get("shutdownAfterJobFinishes", False)
        ttl = _int(spec.get("ttlSecondsAfterFinished", 0)) or 0
        if ttl < 0:
            out.append("spec.ttlSecondsAfterFinished: must not be negative")
        if ttl > 0 and not shutdown:
            out.append(
                "spec.ttlSecondsAfterFinished: set while shutdownAfterJobFinishes is false; KubeRay rejects the RayJob"
            )
        if spec.get("suspend") and not shutdown:
            out.append("spec.suspend: a RayJob with shutdownAfterJobFinishes false cannot be suspended")
        if "rayClusterSpec" not in spec and not spec.get("clusterSelector"):
            out.append("spec: one of rayClusterSpec or clusterSelector must be set")
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            out.append(
                f"spec.submissionMode: {mode!r} is not one every supported KubeRay knows ({', '.join(SUBMISSION_MODES)})"
            )
        if (_int(spec.get("backoffLimit")) or 0) < 0:
            out.append("spec.backoffLimit: must not be negative")
        if (deadline := _int(spec.get("activeDeadlineSeconds"))) is not None and deadline <= 0:
            out.append("spec.activeDeadlineSeconds: must be positive")
        try:
            env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
            if not isinstance(env, dict):
                out.append("spec.runtimeEnvYAML: not a YAML mapping")
        except yaml.YAMLError as e:
            out.append(f"spec.runtimeEnvYAML: not valid YAML: {e}")
    else:
        head_service = cluster_spec(manifest)["headGroupSpec"].get("headService") or {}
        if (head_service.get("metadata") or {}).get("name"):
            out.append(
                "spec.rayClusterConfig.headGroupSpec.headService.metadata.name: must not be set for a RayService"
            )

    cluster = cluster_spec(manifest) if ("rayClusterSpec" in spec or "rayClusterConfig" in spec) else None
    if cluster is not None:
        autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
        for label, group in groups(manifest):
            params = group.get("rayStartParams") or {}
            if "labels" in params:
                out.append(f"{label}: rayStartParams 'labels' is not supported; use the group's labels field")
            if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
                out.append(f"{label}: resources set both in rayStartParams and in the group's resources field")
            out += _pod_problems(label, group)
            if label == "head":
                continue
            lo, hi, n = (_int(group.get(k)) for k in ("minReplicas", "maxReplicas", "replicas"))
            if not autoscaling and (group.get("minReplicas") is None or group.get("maxReplicas") is None):
                out.append(f"{label}: minReplicas and maxReplicas must be set when autoscaling is off")
            if lo is not None and hi is not None and lo > hi:
                out.append(f"{label}: minReplicas {lo} > maxReplicas {hi}")
            if n is not None and ((lo is not None and n < lo) or (hi is not None and n > hi)):
                out.append(f"{label}: replicas {n} outside [minReplicas {lo}, maxReplicas {hi}]")
        out += _port_problems(manifest)
    return out


# ----------------------------------------------------------------------------------------------------------
# Ray Serve configs


def _unknown_keys(model: type, data, where: str) -> list[str]:
    """Keys of ``data`` that the pydantic ``model`` (and the models nested in it) has no field for: Serve
    ignores them, so a misspelt option would silently keep its default."""
    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = {n for n in fields} | {f.alias for f in fields.values() if f.alias}
    out = [f"{where}.{k}: unknown field of {model.__name__}" for k in data if k not in names]
    for fname, field in fields.items():
        key = fname if fname in data else field.alias if field.alias in data else None
        if key is None:
            continue
        for sub in _models_in(field.annotation, BaseModel):
            value = data[key]
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += _unknown_keys(sub, item, f"{where}.{key}[{i}]")
            else:
                out += _unknown_keys(sub, value, f"{where}.{key}")
    return out


def _models_in(annotation, base: type) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, base):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg, base)]


def serve_problems(config: dict, where: str) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from engine.serve import DEPLOYMENT_NAME, ScorerSettings, ServeArgs

    out = []
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        out += [f"{where}: ServeDeploySchema: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    out += _unknown_keys(ServeDeploySchema, config, where)
    for i, app in enumerate(config.get("applications") or []):
        at = f"{where}.applications[{i}]"
        if app.get("import_path") != "engine.serve:build_app":
            out.append(f"{at}.import_path: {app.get('import_path')!r} is not the scorer's builder")
            continue
        env = app.get("runtime_env") or {}
        for key in ("working_dir", "py_modules"):
            if key in env:
                out.append(f"{at}.runtime_env.{key}: the package comes from the image; a {key} would shadow it")
        try:
            ServeArgs.model_validate(app.get("args") or {})
        except ValidationError as e:
            out += [f"{at}.args: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        for j, dep in enumerate(app.get("deployments") or []):
            if dep.get("name") != DEPLOYMENT_NAME:
                out.append(
                    f"{at}.deployments[{j}].name: {dep.get('name')!r} is not a deployment of the app ({DEPLOYMENT_NAME})"
                )
            if "user_config" in dep:
                try:
                    ScorerSettings.model_validate(dep["user_config"])
                except ValidationError as e:
                    out += [
                        f"{at}.deployments[{j}].user_config: {'.'.join(map(str, err['loc']))}: {err['msg']}"
                        for err in e.errors()
                    ]
    return out
