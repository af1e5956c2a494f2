"""RFNet training memory at two dataset sizes: one epoch each, peak object-store use and peak summed RSS.

Streaming ingest must keep both flat as the dataset grows (target: the larger set within 1.3x of the smaller).
Each size is one `adloop train-rfnet --epochs 1` run in its own process with its own local Ray. From outside,
the RSS of that process and of all its descendants (GCS, raylet, Ray Train workers, Ray Data's decode workers)
is summed every --poll-s seconds; inside, a thread asks the raylet for the object store's used bytes (what
`ray memory --stats-only` reports: shared memory plus fallback files; the bytes spilled are reported beside) at
the same rate, and a run in which no sample was taken fails with the sampler's last error. The sets are
synthetic RF1M folders, cheapest at a small render size (the decoder resizes to the model's 64 px anyway):

    adloop synth rf1m --n 2000 --output /tmp/s2k --seed 1702 --render-size 32
    adloop synth rf1m --n 20000 --output /tmp/s20k --seed 1720 --render-size 32
    python bench/rfnet_ingest_memory.py /tmp/s2k /tmp/s20k
    python bench/rfnet_ingest_memory.py /tmp/s2k /tmp/s20k --code /path/to/other/checkout   # other code
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _object_store_sampler(poll_s: float, out: dict) -> None:
    """Record the peak object-store bytes in use of the Ray this process starts (run in a thread)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    while not ray.is_initialized():
        time.sleep(poll_s)
    address = ray.get_runtime_context().gcs_address
    while ray.is_initialized():
        try:
            stats = get_memory_info_reply(get_state_from_address(address)).store_stats
            # in shared memory, plus what did not fit there and went to the fallback files
            used = stats.object_store_bytes_used + stats.object_store_bytes_fallback
            out["peak_object_store_bytes"] = max(out.get("peak_object_store_bytes", 0), used)
            out["spilled_bytes_total"] = stats.spilled_bytes_total
            out["samples"] = out.get("samples", 0) + 1
        except Exception as e:  # Ray shutting down at the end of the run; kept, so a run with no sample says why
            out["error"] = f"{type(e).__name__}: {e}"
        time.sleep(poll_s)


def run_one(args: argparse.Namespace) -> None:
    """The measured process: the job in-process, with the object-store sampler beside it."""
    import jobs.train_rfnet

    store: dict = {}
    threading.Thread(target=_object_store_sampler, args=(args.poll_s, store), daemon=True).start()
    t0 = time.perf_counter()
    code = jobs.train_rfnet.main(
        ["--data", args.data, "--output", args.output, "--epochs", "1", "--workers", str(args.workers)]
    )
    store["seconds"] = time.perf_counter() - t0
    Path(args.output, "bench_store.json").write_text(json.dumps(store))
    sys.exit(code)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(data: str, workers: int, poll_s: float, code: Path, tries: int = 8) -> dict:
    """One measured run; on a loaded machine Ray's start-up can exceed its fixed 30 s, and that run is redone."""
    for attempt in range(1, tries + 1):
        try:
            return _measure(data, workers, poll_s, code)
        except RuntimeError as e:
            if "timed out during startup" not in str(e) or attempt == tries:
                raise
            print(f"Ray did not start in time (try {attempt}); running again", file=sys.stderr, flush=True)


def _measure(data: str, workers: int, poll_s: float, code: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="adloop-ingest-") as out:
        cmd = [sys.executable, __file__, "--one", "--data", data, "--output", out, "--workers", str(workers),
               "--poll-s", str(poll_s)]  # fmt: skip
        env = os.environ | {"PYTHONPATH": str(code)}
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        root, peak = psutil.Process(proc.pid), 0
        reader = threading.Thread(target=lambda: setattr(proc, "log", proc.stdout.read()), daemon=True)
        reader.start()
        while proc.poll() is None:
            peak = max(peak, _tree_rss(root))
            time.sleep(poll_s)
        reader.join()
        if proc.returncode != 0:
            raise RuntimeError(f"train-rfnet on {data} failed with {proc.returncode}: {proc.log[-4000:]}")
        store = json.loads(Path(out, "bench_store.json").read_text())
        if not store.get("samples"):
            raise RuntimeError(f"no object-store sample was taken on {data}: {store.get('error')}")
        metrics = json.loads(Path(out, "metrics.json").read_text())
    return {
        "examples": sum(metrics["split_sizes"].values()),
        "split_sizes": metrics["split_sizes"],
        "seconds": round(store["seconds"], 1),
        "peak_object_store_mb": round(store.get("peak_object_store_bytes", 0) / 2**20, 1),
        "object_store_samples": store["samples"],
        "spilled_mb": round(store.get("spilled_bytes_total", 0) / 2**20, 1),
        "peak_summed_rss_mb": round(peak / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="*", help="RF1M folders, smallest first")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--poll-s", type=float, default=0.5)
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose rfnet and jobs run (default: this one)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return run_one(args)

    rows = []
    for data in args.datasets:
        rows.append(measure(os.path.abspath(data), args.workers, args.poll_s, args.code.resolve()))
        print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0], rows[-1]
    print(json.dumps({
        "runs": rows,
        "size_ratio": last["examples"] / first["examples"],
        "object_store_ratio": last["peak_object_store_mb"] / max(first["peak_object_store_mb"], 1e-9),
        "rss_ratio": last["peak_summed_rss_mb"] / first["peak_summed_rss_mb"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
