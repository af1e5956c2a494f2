"""The deployment manifests in cluster/, checked offline: what the project relies on, with no cluster.

Each KubeRay manifest must be a ray.io/v1 RayJob or RayService, run an entrypoint that exists in this
repository with arguments its parser accepts, and ask for pods whose CPUs and GPUs hold the pools the
entrypoint asks for (the refresh's actor pools through the engine's own ``plan_pools``, per node as well
as in total; the training workers; the Serve replicas at their maximum).

It must also be one that KubeRay runs (``kuberay_checks``): valid under KubeRay's own CRD schemas of the
oldest and the newest supported release, with unknown fields counted as errors, and under the rules its
controller enforces (the head Service's ports, name length, the RayJob shutdown fields, ...). The Serve
configs pass Ray's ``ServeDeploySchema`` and the scorer's own argument models. What the manifests need
from the cluster (KubeRay version, PVCs and their access modes, the Secret, the ServiceAccount, the image)
must be listed in docs/cluster.md, and the image must be what the repository's Dockerfile builds.
``test_a_planted_mistake_is_caught`` and ``test_a_planted_serve_mistake_is_caught`` show that each kind
of mistake is caught.
"""

from __future__ import annotations

import copy
import math
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from cluster.resources import ResourceConfig, plan_pools
from tests.cluster import kuberay_checks as kr

ROOT = Path(__file__).resolve().parents[2]
K8S = sorted((ROOT / "cluster" / "k8s").glob("*.yaml"))
# Modules that arrive with branches not merged into this one yet; their manifests are still checked for
# everything else, and the entrypoint check runs as soon as the module is there.
ELSEWHERE = {"jobs.train_rfft": "rfft", "engine.serve": "serve"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The image every pod runs: what the Dockerfile builds, tagged with the project's version.
IMAGE = f"ghcr.io/adloop/adloop:{PYPROJECT['project']['version']}"
DOCS = ROOT / "docs" / "cluster.md"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _by_kind(kind: str) -> dict[str, dict]:
    return {p.name: m for p in K8S if (m := _load(p))["kind"] == kind}


def _cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return spec["rayClusterSpec"] if manifest["kind"] == "RayJob" else spec["rayClusterConfig"]


def _pod_resources(group: dict) -> dict[str, float]:
    """What Ray sees on one pod of a group: rayStartParams num-cpus/num-gpus win over the container limits."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus = float(limits.get("cpu", 0))
    gpus = float(limits.get("nvidia.com/gpu", 0))
    params = group.get("rayStartParams") or {}
    return {"CPU": float(params.get("num-cpus", cpus)), "GPU": float(params.get("num-gpus", gpus))}


def _nodes(manifest: dict, scaled: bool = False) -> list[dict[str, float]]:
    """Every Ray node of the cluster: the head and each worker pod (``maxReplicas`` of them when scaled)."""
    spec = _cluster_spec(manifest)
    nodes = [_pod_resources(spec["headGroupSpec"])]
    for group in spec["workerGroupSpecs"]:
        n = group["maxReplicas"] if scaled else group["replicas"]
        nodes += [_pod_resources(group)] * n
    return nodes


def _totals(nodes: list[dict[str, float]]) -> dict[str, float]:
    return {"CPU": sum(n["CPU"] for n in nodes), "GPU": sum(n["GPU"] for n in nodes)}


def _entrypoint(manifest: dict) -> tuple[str, list[str]]:
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"], f"entrypoint must be `python -m MODULE ...`, got {argv[:3]}"
    return argv[2], argv[3:]


def _module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def _require_module(module: str) -> None:
    if not _module_file(module).is_file():
        if module in ELSEWHERE:
            pytest.skip(f"{module} arrives with branch {ELSEWHERE[module]!r}")
        pytest.fail(f"{module} does not exist in the repository ({_module_file(module)})")


def test_every_manifest_is_a_kuberay_v1_object_and_all_three_workloads_are_there():
    kinds = {}
    for path in K8S:
        m = _load(path)
        assert m["apiVersion"] == "ray.io/v1", path.name
        assert m["kind"] in ("RayJob", "RayService"), path.name
        assert m["metadata"]["name"]
        spec = _cluster_spec(m)
        assert spec["rayVersion"] == ray.__version__, f"{path.name}: the image's Ray must match the project's pin"
        # The head runs the driver (or the Serve controller) and nothing else: losing a worker pod never
        # loses the job.
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", path.name
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], path.name
            assert _pod_resources(group)["GPU"] >= 1, f"{path.name}: worker group {group['groupName']} has no GPU"
        kinds.setdefault(m["kind"], []).append(path.name)
    modules = {_entrypoint(m)[0] for m in _by_kind("RayJob").values()}
    assert modules == {"jobs.refresh", "jobs.train_rfnet", "jobs.train_rfft"}
    assert len(kinds["RayService"]) == 1


@pytest.mark.parametrize("name", sorted(_by_kind("RayJob")))
def test_rayjob_entrypoint_exists_and_its_arguments_parse(name):
    manifest = _by_kind("RayJob")[name]
    module, argv = _entrypoint(manifest)
    _require_module(module)
    if module == "jobs.refresh":
        from jobs.refresh import build_config, parse_args

        build_config(parse_args(argv))
    elif module == "jobs.train_rfnet":
        from jobs.train_rfnet import _parser, config_from_args

        config_from_args(_parser().parse_args(argv))
    else:
        from jobs.train_rfft import parse_args

        parse_args(argv)
    env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"  # pods never reach the hub; weights come from /models


def test_refresh_pools_fit_the_pods_and_are_what_the_engine_derives_for_them():
    from jobs.refresh import build_config, parse_args

    manifest = _by_kind("RayJob")["rayjob-refresh.yaml"]
    cfg = build_config(parse_args(_entrypoint(manifest)[1])).resources
    nodes = _nodes(manifest)
    plan = plan_pools(cfg, _totals(nodes), nodes)  # raises when the pools do not fit, in total or per node
    default = plan_pools(ResourceConfig(), _totals(nodes), nodes)
    assert plan.generators == default.generators and plan.scorers >= default.scorers
    assert (plan.gpus_per_generator, plan.gpus_per_scorer) == (default.gpus_per_generator, default.gpus_per_scorer)
    # No GPU share is left idle that could hold one more scorer (the default leaves half a GPU on 8), and
    # the actors pack onto the pods (first fit, as the scheduler places them).
    used = plan.generators * plan.gpus_per_generator + plan.scorers * plan.gpus_per_scorer
    assert _totals(nodes)["GPU"] - used < plan.gpus_per_scorer
    free = [dict(n) for n in nodes]
    actors = [(plan.cpus_per_generator, plan.gpus_per_generator)] * plan.generators
    actors += [(plan.cpus_per_scorer, plan.gpus_per_scorer)] * plan.scorers
    for cpus, gpus in actors:
        node = next((n for n in free if n["CPU"] >= cpus - 1e-9 and n["GPU"] >= gpus - 1e-9), None)
        assert node is not None, f"an actor of ({cpus} CPU, {gpus} GPU) finds no room; left: {free}"
        node["CPU"] -= cpus
        node["GPU"] -= gpus


@pytest.mark.parametrize("name", ["rayjob-train-rfnet.yaml", "rayjob-train-rfft.yaml"])
def test_training_workers_fit_the_pods(name):
    manifest = _by_kind("RayJob")[name]
    argv = _entrypoint(manifest)[1]
    workers = int(argv[argv.index("--workers") + 1])
    cpus = int(argv[argv.index("--cpus-per-worker") + 1]) if "--cpus-per-worker" in argv else 1
    gpus = 1 if "--gpu" in argv else 0
    assert gpus == 1, "training runs on the GPU pods"
    room = sum(min(n["CPU"] // cpus, n["GPU"] // gpus) for n in _nodes(manifest)[1:])
    assert room >= workers, f"{workers} workers of ({cpus} CPU, {gpus} GPU) but the pods hold {room}"
    if name == "rayjob-train-rfnet.yaml":
        assert int(argv[argv.index("--max-failures") + 1]) >= 1  # a lost pod restarts from the last checkpoint


def test_rayservice_runs_the_scorer_app_and_its_replicas_fit():
    (manifest,) = _by_kind("RayService").values()
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert attr == "build_app"
    args = app["args"]
    nodes = _nodes(manifest, scaled=True)
    per_pod = [min(n["CPU"] // args["num_cpus"], math.floor(n["GPU"] / args["num_gpus"] + 1e-9)) for n in nodes[1:]]
    assert sum(per_pod) >= args["max_replicas"], f"max_replicas {args['max_replicas']} but the pods hold {per_pod}"
    assert _cluster_spec(manifest)["enableInTreeAutoscaling"] is True  # Serve scales replicas, KubeRay pods
    _require_module(module)
    from engine.serve import ServeArgs

    ServeArgs.model_validate(args)  # the app builder accepts these args as they are


def test_cluster_launcher_config():
    import json

    import jsonschema
    import ray.autoscaler

    cfg = _load(ROOT / "cluster" / "launcher.yaml")
    # Ray's own schema for cluster configs (what `ray up` validates with): unknown keys are errors there.
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= cfg["max_workers"]
    assert any(c.startswith("ray start --head") for c in cfg["head_start_ray_commands"])
    assert any(c.startswith("ray start --address") for c in cfg["worker_start_ray_commands"])
    # Ray, Python and the package come from the project's image, never from the AMI's own Python (3.10 on
    # the Deep Learning AMIs, which requires-python refuses), and nothing is pip-installed on the VMs.
    assert cfg["docker"]["image"] == IMAGE
    commands = [
        c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in cfg.get(key, [])
    ]
    assert not [c for c in commands if "pip install" in c], commands
    # No placeholder AMI: each node type resolves the AMI at launch from AWS's public SSM parameter.
    for name, t in types.items():
        assert t["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"), name
    # With min_workers up, the refresh's default pools plan without error on this cluster.
    nodes = [{"CPU": 0.0, "GPU": 0.0}]
    for t in workers:
        nodes += [{"CPU": float(t["resources"]["CPU"]), "GPU": float(t["resources"].get("GPU", 0))}] * t["min_workers"]
    plan = plan_pools(ResourceConfig(), _totals(nodes), nodes)
    assert plan.device == "cuda" and plan.generators >= 1


def test_plan_pools_rejects_an_actor_no_single_node_can_hold():
    from cluster.resources import ResourceError

    nodes = [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]
    ok = plan_pools(ResourceConfig(gpus_per_generator=1, generators=1, scorers=4), {"CPU": 16, "GPU": 2}, nodes)
    assert ok.generators == 1
    # 2 GPUs in total, but no node has 2: Ray would wait forever for the generator.
    with pytest.raises(ResourceError, match="no node has that much"):
        plan_pools(ResourceConfig(gpus_per_generator=2, generators=1, gpus_per_scorer=0), {"CPU": 16, "GPU": 2}, nodes)
    with pytest.raises(ResourceError, match="one scorer asks for 12 CPU"):
        plan_pools(ResourceConfig(cpus_per_scorer=12, scorers=1), {"CPU": 16, "GPU": 2}, nodes)


# ----------------------------------------------------------------------------------------------------------
# What KubeRay makes of the manifests: its CRD schemas and its controller's rules (tests/cluster/kuberay_checks.py)

MANIFESTS = {p.name: _load(p) for p in K8S}


def _problems(manifest: dict) -> list[str]:
    out = [p for tag in kr.KUBERAY_TAGS for p in kr.schema_problems(manifest, tag)]
    return out + kr.controller_problems(manifest)


@pytest.mark.parametrize("tag", kr.KUBERAY_TAGS)
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_is_valid_under_the_kuberay_crd_schema(name, tag):
    assert kr.schema_problems(MANIFESTS[name], tag) == []


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_passes_the_kuberay_controller_rules(name):
    assert kr.controller_problems(MANIFESTS[name]) == []


@pytest.mark.parametrize("tag", kr.KUBERAY_TAGS)
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_sets_no_field_with_cel_rules(name, tag):
    # jsonschema cannot evaluate the CRDs' CEL rules (x-kubernetes-validations); none applies while the
    # manifests leave those fields alone (deletionStrategy, managedBy, gcsFaultToleranceOptions).
    m = MANIFESTS[name]
    assert [path for path in kr.cel_fields(tag, m["kind"]) if kr.has_field(m, path)] == []


def test_head_service_ports_are_what_kuberay_builds():
    service = MANIFESTS["rayservice-scorer.yaml"]
    ports = kr.head_service_ports(service)
    assert {k: ports[k] for k in kr.DEFAULT_HEAD_PORTS} == kr.DEFAULT_HEAD_PORTS
    assert ports["serve"] == kr.serve_config_of(service)["http_options"]["port"]
    # The RayJobs declare no port, so KubeRay gives their head Service all the defaults plus metrics.
    for name, m in _by_kind("RayJob").items():
        assert not kr.cluster_spec(m)["headGroupSpec"]["template"]["spec"]["containers"][0].get("ports"), name
        assert kr.head_service_ports(m) == {**kr.DEFAULT_HEAD_PORTS, "metrics": 8080}


def _group(m, i=None):
    spec = kr.cluster_spec(m)
    return spec["headGroupSpec"] if i is None else spec["workerGroupSpecs"][i]


def _container(m, i=None):
    return _group(m, i)["template"]["spec"]["containers"][0]


def _set(path, value):
    def mutate(m):
        *parents, last = path
        node = m
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


SERVICE, REFRESH, RFNET = "rayservice-scorer.yaml", "rayjob-refresh.yaml", "rayjob-train-rfnet.yaml"
PLANTED = [
    # Unknown or misspelt fields: pruned (or refused) by Kubernetes, errors here.
    pytest.param(
        REFRESH,
        _set(("spec", "shutdownAfterJobFinish"), True),
        "'shutdownAfterJobFinish' was unexpected",
        id="unknown-spec-field",
    ),
    pytest.param(
        SERVICE,
        lambda m: _group(m).update(rayStartParam={}),
        "'rayStartParam' was unexpected",
        id="unknown-group-field",
    ),
    pytest.param(
        RFNET,
        lambda m: _container(m, 0).update(resource={}),
        "'resource' was unexpected",
        id="unknown-container-field",
    ),
    pytest.param(
        SERVICE, lambda m: m["metadata"].update(lables={}), "'lables' was unexpected", id="unknown-metadata-field"
    ),
    # Only in newer KubeRay: fails the oldest supported release's schema.
    pytest.param(
        SERVICE,
        _set(("spec", "excludeHeadPodFromServeSvc"), True),
        "KubeRay v1.2.2 schema: spec: Additional properties are not allowed ('excludeHeadPodFromServeSvc'",
        id="field-newer-than-1.2.2",
    ),
    # Wrong types and missing required fields.
    pytest.param(
        SERVICE,
        lambda m: _group(m, 0).update(replicas="2"),
        "replicas: '2' is not of type 'integer'",
        id="wrong-type-replicas",
    ),
    pytest.param(
        REFRESH,
        lambda m: _group(m)["rayStartParams"].update({"num-cpus": 0}),
        "0 is not of type 'string'",
        id="wrong-type-ray-start-param",
    ),
    pytest.param(
        REFRESH,
        _set(("spec", "backoffLimit"), "1"),
        "backoffLimit: '1' is not of type 'integer'",
        id="wrong-type-backoff",
    ),
    pytest.param(
        RFNET, lambda m: _container(m).pop("name"), "'name' is a required property", id="missing-container-name"
    ),
    # The head Service KubeRay builds from the head container's ports.
    pytest.param(
        SERVICE,
        lambda m: _container(m).update(ports=[{"containerPort": 8000, "name": "serve"}]),
        "no port named 'dashboard'",
        id="service-only-serve-port",
    ),
    pytest.param(SERVICE, lambda m: _container(m)["ports"].pop(), "no port named 'serve'", id="service-no-serve-port"),
    pytest.param(
        SERVICE,
        lambda m: _container(m)["ports"][3].update(containerPort=8001),
        "serveConfigV2 http_options.port is 8000",
        id="service-serve-port-mismatch",
    ),
    pytest.param(
        REFRESH,
        lambda m: _container(m).update(ports=[{"containerPort": 8265, "name": "dashboard"}]),
        "no port named 'gcs-server'",
        id="job-ports-without-gcs",
    ),
    pytest.param(
        RFNET,
        lambda m: _container(m).update(ports=[{"containerPort": 8265, "name": "dash"}]),
        "no port named 'dashboard'",
        id="job-dashboard-misnamed",
    ),
    # Names, shutdown and replica rules of the controller; pod rules of Kubernetes.
    pytest.param(
        REFRESH,
        _set(("metadata", "name"), "adloop-refresh-" + "x" * 33),
        "KubeRay allows at most 47",
        id="name-too-long",
    ),
    pytest.param(SERVICE, _set(("metadata", "name"), "adloop_scorer"), "not a DNS-1035 label", id="name-not-dns-1035"),
    pytest.param(
        RFNET,
        _set(("spec", "shutdownAfterJobFinishes"), False),
        "set while shutdownAfterJobFinishes is false",
        id="ttl-without-shutdown",
    ),
    pytest.param(
        REFRESH,
        _set(("spec", "submissionMode"), "SidecarMode"),
        "not one every supported KubeRay knows",
        id="submission-mode-too-new",
    ),
    pytest.param(
        SERVICE, lambda m: _group(m, 0).update(minReplicas=3), "minReplicas 3 > maxReplicas 2", id="min-above-max"
    ),
    pytest.param(
        RFNET,
        lambda m: _container(m, 0)["volumeMounts"].append({"name": "scratch", "mountPath": "/scratch"}),
        "'scratch', which is not a volume",
        id="mount-without-volume",
    ),
]


@pytest.mark.parametrize("name, mutate, expected", PLANTED)
def test_a_planted_mistake_is_caught(name, mutate, expected):
    manifest = copy.deepcopy(MANIFESTS[name])
    assert _problems(manifest) == []
    mutate(manifest)
    problems = _problems(manifest)
    assert any(expected in p for p in problems), problems


# ----------------------------------------------------------------------------------------------------------
# The Serve configs: Ray's ServeDeploySchema, and the app's own models for args and user_config

SERVE_CONFIGS = {
    "cluster/serve_config.yaml": lambda: _load(ROOT / "cluster" / "serve_config.yaml"),
    "rayservice-scorer.yaml serveConfigV2": lambda: kr.serve_config_of(MANIFESTS[SERVICE]),
}


@pytest.mark.parametrize("where", sorted(SERVE_CONFIGS))
def test_serve_config_passes_serve_deploy_schema_and_the_apps_models(where):
    _require_module("engine.serve")
    from engine.serve import ScorerSettings

    config = SERVE_CONFIGS[where]()
    assert kr.serve_problems(config, where) == []
    (app,) = config["applications"]
    (deployment,) = app["deployments"]
    # Serve replaces user_config whole: every setting is spelt out, so none falls back to a default unseen.
    assert set(deployment["user_config"]) == set(ScorerSettings.model_fields)


def _app(cfg):
    return cfg["applications"][0]


PLANTED_SERVE = [
    pytest.param(
        lambda c: c.update(proxy_locaton="EveryNode"),
        "proxy_locaton: unknown field of ServeDeploySchema",
        id="unknown-top-level",
    ),
    pytest.param(
        lambda c: _app(c)["deployments"][0].update(user_confg={}),
        "user_confg: unknown field of DeploymentSchema",
        id="unknown-deployment-field",
    ),
    pytest.param(
        lambda c: _app(c)["deployments"][0].update(max_ongoing_requests="many"),
        "max_ongoing_requests: Input should be a valid integer",
        id="wrong-type-deployment",
    ),
    pytest.param(
        lambda c: c["http_options"].update(port="eight thousand"),
        "http_options.port: Input should be a valid integer",
        id="wrong-type-http-port",
    ),
    pytest.param(
        lambda c: _app(c)["args"].update(treshold=0.5),
        "args: treshold: Extra inputs are not permitted",
        id="unknown-arg",
    ),
    pytest.param(
        lambda c: _app(c)["args"].update(num_gpus="a quarter"),
        "args: num_gpus: Input should be a valid number",
        id="wrong-type-arg",
    ),
    pytest.param(
        lambda c: _app(c)["deployments"][0]["user_config"].update(threshold=1.5),
        "user_config: threshold: Input should be less than or equal to 1",
        id="bad-user-config",
    ),
    pytest.param(
        lambda c: _app(c)["deployments"][0].update(name="Scorer"),
        "is not a deployment of the app",
        id="wrong-deployment-name",
    ),
    pytest.param(
        lambda c: _app(c).setdefault("runtime_env", {}).update(working_dir="."),
        "runtime_env.working_dir",
        id="working-dir",
    ),
]


@pytest.mark.parametrize("where", sorted(SERVE_CONFIGS))
@pytest.mark.parametrize("mutate, expected", PLANTED_SERVE)
def test_a_planted_serve_mistake_is_caught(where, mutate, expected):
    _require_module("engine.serve")
    config = SERVE_CONFIGS[where]()
    mutate(config)
    problems = kr.serve_problems(config, where)
    assert any(expected in p for p in problems), problems


# ----------------------------------------------------------------------------------------------------------
# What the manifests need from the cluster, the project's own rules for the pods, and the image


def _pods(manifest: dict):
    """``(label, pod spec, pod count)`` of every group (worker groups at maxReplicas)."""
    for label, group in kr.groups(manifest):
        yield label, group["template"]["spec"], 1 if label == "head" else group.get("maxReplicas", 1)


def _touches_object_storage(manifest: dict) -> bool:
    if manifest["kind"] == "RayJob":
        return "s3://" in manifest["spec"]["entrypoint"]
    return any(
        root.startswith("s3://")
        for app in kr.serve_config_of(manifest)["applications"]
        for root in app["args"].get("allowed_uri_roots", [])
    )


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_pods_run_the_projects_image_and_reach_what_their_work_needs(name):
    m = MANIFESTS[name]
    spec = m["spec"]
    for label, pod, _ in _pods(m):
        images = {c["image"] for c in pod["containers"]}
        assert images == {IMAGE}, f"{name} {label}: {images}"
    if m["kind"] == "RayJob":
        # A cluster per run, torn down after it (GPU pods must not linger).
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["submissionMode"] == "K8sJobMode"
        envs = [yaml.safe_load(spec["runtimeEnvYAML"])]
    else:
        envs = [app.get("runtime_env") or {} for app in kr.serve_config_of(m)["applications"]]
    for env in envs:  # the package is in the image: a working_dir would need uploading, and shadow it
        assert not {"working_dir", "py_modules"} & set(env), name
    if _touches_object_storage(m):
        # The pods doing the s3:// reads and writes carry the object-storage identity: for a RayJob the
        # head (the driver) and the workers (Ray Data's tasks); for the RayService the replicas' workers.
        for label, pod, _ in _pods(m):
            if m["kind"] == "RayJob" or label != "head":
                assert pod.get("serviceAccountName") == "adloop", f"{name} {label}"


def test_scorer_token_file_is_the_mounted_secret_key():
    m = MANIFESTS[SERVICE]
    token_file = Path(kr.serve_config_of(m)["applications"][0]["args"]["token_file"])
    for label, pod, _ in _pods(m):
        if label == "head":
            continue  # replicas never run there (num-cpus 0)
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [vm for vm in pod["containers"][0]["volumeMounts"] if vm["mountPath"] == str(token_file.parent)]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "adloop-scorer-token"
        assert {"key": "scorer-token", "path": token_file.name} in secret["items"]


def _claims() -> dict[str, str]:
    """Each PVC the manifests mount, with the access mode it needs: ReadWriteMany when more than one pod
    mounts it and one writes; ReadOnlyMany when several pods only read it."""
    pods_of: dict[str, int] = {}
    written: set[str] = set()
    for m in MANIFESTS.values():
        for _, pod, count in _pods(m):
            volumes = {v["name"]: v for v in pod.get("volumes") or []}
            for c in pod["containers"]:
                for vm in c.get("volumeMounts") or []:
                    claim = (volumes[vm["name"]].get("persistentVolumeClaim") or {}).get("claimName")
                    if claim:
                        pods_of[claim] = pods_of.get(claim, 0) + count
                        if not vm.get("readOnly"):
                            written.add(claim)
    return {
        claim: "ReadWriteMany" if claim in written and n > 1 else "ReadOnlyMany" if n > 1 else "ReadWriteOnce"
        for claim, n in pods_of.items()
    }


def _before_you_apply() -> str:
    text = DOCS.read_text()
    start = text.index("## Before you apply")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_docs_list_what_the_cluster_must_provide():
    section = _before_you_apply()
    oldest = kr.KUBERAY_TAGS[0].lstrip("v")
    assert f"KubeRay {oldest}" in section, f"docs/cluster.md must state the minimum KubeRay version ({oldest})"
    modes = _claims()
    assert modes == {"adloop-models": "ReadOnlyMany", "adloop-data": "ReadOnlyMany", "adloop-runs": "ReadWriteMany"}
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \|.*$", section, re.MULTILINE)}
    for claim, mode in modes.items():
        assert claim in rows and mode in rows[claim], f"docs/cluster.md: no table row for PVC {claim} with {mode}"
    for m in MANIFESTS.values():
        for _, pod, _ in _pods(m):
            for v in pod.get("volumes") or []:
                if "secret" in v:
                    assert v["secret"]["secretName"] in rows
                    for item in v["secret"].get("items", []):
                        assert item["key"] in rows[v["secret"]["secretName"]]
            if "serviceAccountName" in pod:
                assert pod["serviceAccountName"] in rows, (
                    f"docs/cluster.md: no row for ServiceAccount {pod['serviceAccountName']}"
                )
    assert IMAGE in section and "Dockerfile" in section
    assert "launcher" in section and "Python 3.11" in section


def test_dockerfile_builds_the_image_the_manifests_name():
    text = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    python = PYPROJECT["project"]["requires-python"]
    assert python == ">=3.11,<3.12" and base == f"rayproject/ray:{ray.__version__}-py311-gpu", base
    assert f"docker build -t {IMAGE} ." in text
    # Installed the way the README's set-up installs it: the pinned torch first, then the project.
    makefile = (ROOT / "Makefile").read_text()
    (torch_pin,) = re.findall(r"pip install -q (torch==\S+)", makefile)
    runs = re.findall(r"^RUN (.*)$", text, re.MULTILINE)
    assert runs[0] == f"pip install {torch_pin}", runs
    assert runs[1] == "pip install .", runs
    # s3fs for the s3:// paths, at the version of fsspec that pyproject pins (s3fs requires it exactly).
    (fsspec,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("fsspec==")]
    assert runs[2].startswith("pip install s3fs==" + fsspec.split("==")[1] + " "), runs
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
