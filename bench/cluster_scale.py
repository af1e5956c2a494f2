"""Refresh throughput on 1 Ray node versus 3 Ray nodes with the same total CPUs, and recovery from a node kill.

Both clusters run on this machine (tests/cluster/local_cluster.py), so the ratio isolates what Ray costs when the
same pools are spread over several raylets and object stores (cross-node object transfers, remote
scheduling) instead of one; it says nothing about network bandwidth between real machines.

    python bench/cluster_scale.py --skus 42 --cpus 6

Runs, in order: one node with ``--cpus`` CPUs; three nodes with ``--cpus / 3`` CPUs each (same pool options);
then the 3-node cluster again with a scorer accepting half the candidates (several rounds) and a worker node
hosting a generator or the scorer killed once the first candidates are written: the time from the kill to the job's end,
next to the same run without a kill.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import write_manifest  # noqa: E402


def _refresh(manifest: Path, out: Path, pools: list[str], extra: list[str]) -> dict:
    from jobs import refresh

    args = ["--input", str(manifest), "--output", str(out), "--size", "32", "--steps", "2", "--no-progress"]
    t0 = time.perf_counter()
    assert refresh.main([*args, *pools, *extra]) == 0
    seconds = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds": seconds, "candidates": summary["candidates"], "images_per_s": summary["candidates"] / seconds}


def _kill_a_pool_node(cluster, out: Path, record: dict) -> None:
    from engine.outputs import complete_parts

    while not complete_parts(str(out / "candidates")):
        time.sleep(0.2)
    running = [
        w
        for w in cluster.workers
        if w.alive and (cluster.runs(w, "GenerateCandidates") or cluster.runs(w, "ScoreStage"))
    ]
    if running:
        cluster.kill_node(running[0])
        record["killed_at"] = time.perf_counter()


def main() -> None:
    import ray

    from tests.cluster.local_cluster import LocalCluster

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=42)
    p.add_argument("--cpus", type=int, default=6, help="total logical CPUs of each cluster (divisible by 3)")
    p.add_argument("--kill-only", action="store_true", help="only the node-kill measurement (3 nodes)")
    args = p.parse_args()
    per = args.cpus // 3
    # The same pools on both clusters: 2 generators and 1 scorer, room left for Ray Data's tasks.
    pools = ["--generators", "2", "--cpus-per-generator", "1", "--scorers", "1", "--cpus-per-scorer", "0.5",
             "--gen-batch-size", "4"]  # fmt: skip
    report: dict = {"skus": args.skus, "total_cpus": args.cpus, "pools": " ".join(pools)}
    with tempfile.TemporaryDirectory(prefix="adloop-cluster-") as tmp:
        manifest = write_manifest(Path(tmp) / "skus.jsonl", args.skus)
        if not args.kill_only:
            with LocalCluster(head_cpus=args.cpus, worker_cpus=[], dashboard=False) as one:
                ray.init(address=one.address, log_to_driver=False)
                report["one_node"] = _refresh(manifest, Path(tmp) / "one", pools, ["--threshold", "0"])
                ray.shutdown()
        with LocalCluster(head_cpus=per, worker_cpus=[per, per]) as three:
            ray.init(address=three.address, log_to_driver=False)
            if not args.kill_only:
                report["three_nodes"] = _refresh(manifest, Path(tmp) / "three", pools, ["--threshold", "0"])
            half = ["--rfnet", "fixed-rate:0.5", "--max-attempts", "4"]
            report["three_nodes_rounds"] = _refresh(manifest, Path(tmp) / "rounds", pools, half)
            record: dict = {}
            out = Path(tmp) / "killed"
            killer = threading.Thread(target=_kill_a_pool_node, args=(three, out, record), daemon=True)
            killer.start()
            run = _refresh(manifest, out, pools, half)
            end = time.perf_counter()
            killer.join(timeout=30)
            run["kill_to_finish_s"] = end - record["killed_at"] if "killed_at" in record else None
            report["three_nodes_rounds_node_killed"] = run
            ray.shutdown()
    if not args.kill_only:
        report["three_over_one_throughput"] = (
            report["three_nodes"]["images_per_s"] / report["one_node"]["images_per_s"]
        )
    report["killed_over_unkilled_seconds"] = (
        report["three_nodes_rounds_node_killed"]["seconds"] / report["three_nodes_rounds"]["seconds"]
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
