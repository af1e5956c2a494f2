"""The deployment manifests in cluster/, checked offline: what the project relies on, with no cluster.

Each KubeRay manifest must be a ray.io/v1 RayJob or RayService, run an entrypoint that exists in this
repository with arguments its parser accepts, and ask for pods whose CPUs and GPUs hold the pools the
entrypoint asks for (the refresh's actor pools through the engine's own ``plan_pools``, per node as well
as in total; the training workers; the Serve replicas at their maximum).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from cluster.resources import ResourceConfig, plan_pools

ROOT = Path(__file__).resolve().parents[2]
K8S = sorted((ROOT / "cluster" / "k8s").glob("*.yaml"))
# Modules that arrive with branches not merged into this one yet; their manifests are still checked for
# everything else, and the entrypoint check runs as soon as the module is there.
ELSEWHERE = {"jobs.train_rfft": "rfft", "engine.serve": "serve"}


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
    cfg = _load(ROOT / "cluster" / "launcher.yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= cfg["max_workers"]
    assert any(c.startswith("ray start --head") for c in cfg["head_start_ray_commands"])
    assert any(c.startswith("ray start --address") for c in cfg["worker_start_ray_commands"])
    assert any("ray[default,train,serve]==" + ray.__version__ in c for c in cfg["setup_commands"])
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
