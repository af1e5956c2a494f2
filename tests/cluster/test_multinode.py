"""The real jobs on a 3-node Ray cluster on this machine (tests/cluster/local_cluster.py): pools spread across
nodes, a worker node lost in the middle of a refresh and of RFNet training, ``ray job submit`` of both.

One cluster serves the module: a head and two workers with 2 CPUs each (the driver attaches to the
head). A test that loses a node starts a replacement afterwards, as KubeRay or the autoscaler would.
Ray Data's file listing takes one whole CPU on one node, so every layout here leaves a node with a whole
CPU beside the actors (see docs/cluster.md).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from engine.outputs import complete_parts
from engine.samples import SAMPLES, SAMPLES_DIR
from jobs import refresh
from tests.cluster.local_cluster import BIN, LocalCluster

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--size", "32", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def cluster():
    ray.shutdown()  # a local Ray from earlier tests; the shared fixture starts a fresh one when next asked
    with LocalCluster(head_cpus=2, worker_cpus=[2, 2]) as c:
        ray.init(address=c.address, log_to_driver=False)
        try:
            yield c
        finally:
            ray.shutdown()


def _manifest(tmp_path: Path, copies: int) -> tuple[Path, set[str]]:
    lines, ids = [], set()
    for c in range(copies):
        for sku, (caption, _) in SAMPLES.items():
            name = next(SAMPLES_DIR.glob(f"{sku}.*")).name
            sku_id = f"{sku}-{c}"
            ids.add(sku_id)
            lines.append({"sku_id": sku_id, "image_uri": str(SAMPLES_DIR / name), "caption": caption})
    path = tmp_path / "skus.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, ids


def _rows(folder: Path) -> list[dict]:
    return pq.read_table(complete_parts(str(folder))).to_pylist()


def _actor_nodes(c: LocalCluster, stage: str, alive_only: bool = False) -> list[str]:
    """Node ids of the actors whose class name contains ``stage`` (the refresh's pool actors are
    ``GenerateCandidatesActor`` and ``ScoreStageActor``), read from the GCS actor table."""
    actors = ray._private.state.actors().values()
    return [
        a["Address"]["NodeID"]
        for a in actors
        if stage in a["ActorClassName"] and (a["State"] == "ALIVE" or not alive_only) and a["Address"]["NodeID"]
    ]


def _check_one_final_row_and_nothing_generated_twice(out: Path, ids: set[str]) -> tuple[list[dict], list[dict]]:
    results, candidates = _rows(out / "results"), _rows(out / "candidates")
    assert Counter(r["sku_id"] for r in results) == Counter(ids)  # every SKU exactly once
    per_attempt = Counter((c["sku_id"], c["attempt"]) for c in candidates)
    assert max(per_attempt.values()) == 1, [k for k, v in per_attempt.items() if v > 1]
    for r in results:
        mine = [c for c in candidates if c["sku_id"] == r["sku_id"]]
        assert sorted(c["attempt"] for c in mine)[: r["attempts"]] == list(range(1, r["attempts"] + 1))
        if r["status"] == "accepted":
            # Once accepted, a SKU never comes back: no candidate of it in a later round.
            won = next(c for c in mine if c["attempt"] == r["attempts"])
            assert won["accepted"] and all(c["round"] <= won["round"] for c in mine)
    return results, candidates


def test_refresh_spreads_its_actor_pools_across_nodes(cluster, tmp_path):
    manifest, ids = _manifest(tmp_path, copies=1)
    out = tmp_path / "out"
    # 1.5 CPUs per generator: two never fit on one 2-CPU node, so the pool must span two nodes.
    args = ["--input", str(manifest), "--output", str(out), "--threshold", "0", *FAST,
            "--generators", "2", "--cpus-per-generator", "1.5", "--scorers", "2", "--cpus-per-scorer", "0.25"]  # fmt: skip
    assert refresh.main(args) == 0
    results, _ = _check_one_final_row_and_nothing_generated_twice(out, ids)
    assert {r["status"] for r in results} == {"accepted"}
    ids_by_name = cluster.node_ids()
    gen_nodes = _actor_nodes(cluster, "GenerateCandidates")
    assert len(gen_nodes) == 2 and len(set(gen_nodes)) == 2, (gen_nodes, ids_by_name)
    assert set(_actor_nodes(cluster, "ScoreStage")) <= set(ids_by_name.values())


@pytest.mark.slow
def test_refresh_survives_losing_a_worker_node(cluster, tmp_path):
    manifest, ids = _manifest(tmp_path, copies=2)
    out = tmp_path / "out"
    # A scorer accepting half the candidates gives several rounds; the node goes in the middle of one.
    args = ["--input", str(manifest), "--output", str(out), "--rfnet", "fixed-rate:0.5", "--max-attempts", "4",
            *FAST, "--generators", "2", "--cpus-per-generator", "1", "--scorers", "1", "--cpus-per-scorer", "0.25",
            "--gen-batch-size", "2"]  # fmt: skip
    killed: dict = {}

    def lose_a_node_running_the_pools() -> None:
        try:
            deadline = time.time() + 600
            while time.time() < deadline and not complete_parts(str(out / "candidates")):
                time.sleep(0.5)
            # The pools need 2.25 CPUs and the head has 2, so at least one of their actors is on a worker.
            running = [w for w in cluster.workers if w.alive and cluster.runs(w, "GenerateCandidates")]
            running += [w for w in cluster.workers if w.alive and cluster.runs(w, "ScoreStage")]
            killed["pools_on"] = [w.name for w in running]
            if running:
                killed["node"] = running[0]
                killed["done_before"] = len(complete_parts(str(out / "results")))
                cluster.kill_node(killed["node"])
                killed["at"] = time.time()
        except Exception as err:  # reported by the assertion below, not lost in the thread
            killed["error"] = repr(err)

    killer = threading.Thread(target=lose_a_node_running_the_pools, daemon=True)
    killer.start()
    try:
        assert refresh.main(args) == 0
        finished = time.time()
    finally:
        killer.join(timeout=60)
        if "node" in killed:
            cluster.add_worker(2)  # the replacement a real cluster would bring up
    assert "node" in killed, killed
    assert cluster.node_ids().get(killed["node"].name) is None  # it really is gone
    results, candidates = _check_one_final_row_and_nothing_generated_twice(out, ids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skus"] == len(ids) and summary["candidates"] == len(candidates)
    # Either Ray Data recovered by itself (lineage, actor restarts) or the round was rerun (engine/commit.py).
    reruns = summary["this_run"]["round_reruns"]
    print(
        f"node killed after {killed['done_before']} result files; job finished {finished - killed['at']:.1f} s "
        f"later; rounds rerun: {reruns}"
    )


@pytest.mark.slow
def test_rfnet_training_two_workers_on_two_nodes_restarts_from_checkpoint_after_node_loss(cluster, tmp_path):
    from rfnet.synth import generate_rf1m
    from rfnet.train import TrainConfig, fit

    data, out = str(tmp_path / "data"), str(tmp_path / "train")
    generate_rf1m(data, 64, seed=0, size=32)
    # 2 CPUs per worker: one worker per 2-CPU node, so the two workers sit on two different nodes. Enough
    # epochs that training is still running when the node goes (with 3 short epochs a quiet machine
    # finished before the kill landed, and nothing restarted).
    cfg = TrainConfig(data=data, output=out, num_workers=2, cpus_per_worker=2, batch_size=4, epochs=8,
                      max_steps_per_epoch=6, max_failures=2, strategy="ddp")  # fmt: skip
    cfg.model = cfg.model.replace(image_size=32)
    seen: dict = {}

    def lose_a_worker_node_after_the_first_checkpoint() -> None:
        try:
            _lose_after_checkpoint()
        except Exception as err:
            seen["error"] = repr(err)

    def _lose_after_checkpoint() -> None:
        deadline = time.time() + 900
        while time.time() < deadline and not glob.glob(os.path.join(out, "ray", cfg.name, "checkpoint_*")):
            if not seen.get("nodes"):
                nodes = set(_actor_nodes(cluster, "RayTrainWorker", alive_only=True))
                if len(nodes) == 2:
                    seen["nodes"] = nodes
            time.sleep(0.5)
        head = cluster.node_ids()["head"]
        workers = [n for n in _actor_nodes(cluster, "RayTrainWorker", alive_only=True) if n != head]
        if workers:
            seen["killed"] = cluster.node_named(workers[0])
            cluster.kill_node(seen["killed"])
            cluster.add_worker(2)  # KubeRay brings the pod back; the worker group restarts on it

    killer = threading.Thread(target=lose_a_worker_node_after_the_first_checkpoint, daemon=True)
    killer.start()
    metrics = fit(cfg)
    killer.join(timeout=120)
    assert len(seen.get("nodes", ())) == 2, f"the 2 training workers were not on 2 nodes: {seen}"
    assert "killed" in seen, seen
    # A fresh output, so a start after epoch 0 can only come from Ray Train restoring the checkpoint.
    assert metrics["start_epoch"] >= 1 and metrics["epoch"] == cfg.epochs - 1
    assert [h["epoch"] for h in metrics["history"]] == list(range(cfg.epochs))
    assert metrics["test"]["n"] > 0 and os.path.isfile(os.path.join(out, "rfnet", "model.safetensors"))


@pytest.mark.slow
def test_ray_job_submit_of_refresh_and_training(cluster, tmp_path):
    manifest, ids = _manifest(tmp_path, copies=1)
    data = str(tmp_path / "data")
    from rfnet.synth import generate_rf1m

    generate_rf1m(data, 64, seed=1, size=32)
    jobs = {
        "refresh": ["python", "-m", "jobs.refresh", "--input", str(manifest), "--output", str(tmp_path / "refresh"),
                    "--threshold", "0", *FAST],
        "train": ["python", "-m", "jobs.train_rfnet", "--data", data, "--out", str(tmp_path / "train"),
                  "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "2",
                  "--workers", "2", "--cpus-per-worker", "2"],
    }  # fmt: skip
    for name, entrypoint in jobs.items():
        job = subprocess.run(
            [os.path.join(BIN, "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
             "--", *entrypoint],
            env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert job.returncode == 0 and "succeeded" in job.stdout.lower(), (
            name,
            job.stdout[-4000:],
            job.stderr[-3000:],
        )
    assert Counter(r["sku_id"] for r in _rows(tmp_path / "refresh" / "results")) == Counter(ids)
    metrics = json.load(open(tmp_path / "train" / "metrics.json"))
    assert metrics["test"]["n"] > 0 and metrics["num_workers"] == 2
