"""Helpers shared by the refresh benchmarks: synthetic manifests and a driver-memory sampler."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "engine" / "assets" / "samples").iterdir())


def sample_batch(size: int, n: int, prompt: str = "product on a desk") -> dict[str, np.ndarray]:
    """A generation batch of ``n`` bundled samples laid out on a ``size`` canvas (GenerateStage's columns)."""
    from engine.conditioning import build_condition, decode_product, layout
    from engine.config import ConditioningConfig
    from engine.prepare import stack_rows

    cond = ConditioningConfig(size=size)
    rows = []
    for i in range(n):
        path = SAMPLES[i % len(SAMPLES)]
        c = build_condition(layout(decode_product(path.read_bytes(), str(path), cond), cond), cond)
        rows.append({"seed": i, "prompt": prompt, "negative_prompt": "blurry", **vars(c)})
    return stack_rows(rows)


def example_images(example) -> tuple[np.ndarray, np.ndarray]:
    """An RF1M example's generated image (H, W, 3) and laid-out cutout (H, W, 4), uint8 RGB(A) as stored."""
    import cv2

    image = cv2.imread(example.generated)[..., ::-1]
    cutout = cv2.cvtColor(cv2.imread(example.product, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    return image, cutout


def write_manifest(path: Path, n: int, repeats: int = 1) -> Path:
    """``n`` SKUs with distinct ids cycling over the bundled sample cutouts; with ``repeats`` > 1 each product
    appears that many times under ids of its own (a plain loop then generates it that many times)."""
    with open(path, "w") as f:
        for i in range(n):
            for r in range(repeats):
                sku = f"sku-{i:07d}" if repeats == 1 else f"sku-{i:07d}-{r}"
                f.write(json.dumps({"sku_id": sku, "image_uri": str(SAMPLES[i % len(SAMPLES)])}) + "\n")
    return path


def run_measured(cmd: list[str], poll_s: float = 0.1, cpu_poll_s: float = 1.0) -> dict:
    """Run a command; return its wall time, the peak RSS and peak USS of that process alone (not its
    children), and the CPU seconds of it and of every process under it (Ray's daemons and workers), split
    into the driver, the generation actor(s) and the rest.

    USS is the memory only this process holds: RSS also counts the shared pages it has touched, e.g. Ray's
    object-store blocks, which are not the driver's own. USS is read every ``cpu_poll_s`` (reading it walks
    the process's memory map).

    CPU times are read every ``cpu_poll_s``; a process that ends between two reads loses at most that much
    of its time, which is small against runs of minutes (and Ray keeps its workers for the whole run).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_uss = 0
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds at the latest read)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_uss
        driver = psutil.Process(proc.pid)
        next_cpu = 0.0
        while not stop.is_set():
            try:
                peak = max(peak, driver.memory_info().rss)
                if time.perf_counter() >= next_cpu:
                    next_cpu = time.perf_counter() + cpu_poll_s
                    peak_uss = max(peak_uss, driver.memory_full_info().uss)
                    _read_cpu(driver, cpu)
            except psutil.Error:
                return
            time.sleep(poll_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise RuntimeError(f"{cmd[:4]} failed with {proc.returncode}")
    by_role = {"driver": 0.0, "generation_actor": 0.0, "other": 0.0}
    for role, seconds in cpu.values():
        by_role[role] += seconds
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": peak / 2**20,
        "peak_uss_mb": peak_uss / 2**20,
        "cpu_seconds": by_role,
        "stdout": out,
    }


def _read_cpu(driver: psutil.Process, cpu: dict[int, tuple[str, float]]) -> None:
    """Record the CPU seconds so far of ``driver`` and of each process under it, by role."""
    for p in [driver, *driver.children(recursive=True)]:
        try:
            times = p.cpu_times()
            title = (p.cmdline() or [""])[0]
        except psutil.Error:  # ended meanwhile: its last read stands
            continue
        role = (
            "driver" if p.pid == driver.pid else "generation_actor" if "GenerateCandidatesActor" in title else "other"
        )
        cpu[p.pid] = (role, times.user + times.system)
