"""``adloop refresh`` end to end on a local Ray (tiny models): the job's promises, one by one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.config import ConditioningConfig
from engine.outputs import complete_parts
from engine.prepare import PromptPolicy, condition_row
from engine.samples import SAMPLES, SAMPLES_DIR
from jobs import refresh

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--size", "32", "--steps", "2", "--no-progress"]


def _results(out: Path) -> list[dict]:
    return pq.read_table(complete_parts(str(out / "results"))).to_pylist()


def _candidates(out: Path) -> list[dict]:
    return pq.read_table(complete_parts(str(out / "candidates"))).to_pylist()


def _manifest(tmp_path: Path, copies: int = 1) -> tuple[Path, set[str]]:
    """The bundled samples (``copies`` times, under distinct ids) as a JSONL manifest."""
    lines, ids = [], set()
    for c in range(copies):
        for sku, (caption, _) in SAMPLES.items():
            name = next(SAMPLES_DIR.glob(f"{sku}.*")).name
            sku_id = sku if c == 0 else f"{sku}-copy{c}"
            ids.add(sku_id)
            lines.append({"sku_id": sku_id, "image_uri": str(SAMPLES_DIR / name), "caption": caption})
    path = tmp_path / "skus.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, ids


def _bad_inputs(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Manifest lines of every kind of bad input, and the reason each must fail with."""
    folder.mkdir()
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x89PNG not really")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "white.png")
    Image.new("RGB", (1, 1), (0, 0, 0)).save(folder / "tiny.png")
    Image.new("1", (9000, 9000), 0).save(folder / "bomb.png")
    bottle = str(SAMPLES_DIR / "bottle-001.png")
    rows = {
        "zero": (str(folder / "zero.png"), "empty_file"),
        "garbage": (str(folder / "garbage.png"), "undecodable"),
        "transparent": (str(folder / "transparent.png"), "no_product_pixels"),
        "white": (str(folder / "white.png"), "no_product_pixels"),
        "one-pixel": (str(folder / "tiny.png"), "too_small"),
        "bomb": (str(folder / "bomb.png"), "too_many_pixels"),
        "missing": (str(folder / "missing.png"), "missing_file"),
        "has/slash": (bottle, "invalid_sku_id"),
        "dot..dot": (bottle, "invalid_sku_id"),
        "nul\x00byte": (bottle, "invalid_sku_id"),
    }
    lines = [json.dumps({"sku_id": k, "image_uri": v[0]}) for k, v in rows.items()]
    lines.append(json.dumps({"image_uri": bottle}))  # no sku_id
    lines.append("{not json")
    lines.append(json.dumps({"sku_id": "mug-002", "image_uri": str(folder / "zero.png")}))  # duplicate id: skipped
    return lines, {k: v[1] for k, v in rows.items()}


@pytest.fixture(scope="module")
def accepted_run(tmp_path_factory, ray_local_module):
    """One run where every image passes (threshold 0), with every kind of bad input mixed in."""
    tmp = tmp_path_factory.mktemp("accepted")
    manifest, ids = _manifest(tmp)
    bad_lines, reasons = _bad_inputs(tmp / "bad")
    # Bad rows first, so this run's generator batches hold other products than a run of good rows only;
    # the duplicate line stays last (its first occurrence is the good mug-002).
    good_lines = manifest.read_text().splitlines()
    manifest.write_text("".join(line + "\n" for line in bad_lines[:-1] + good_lines + bad_lines[-1:]))
    out = tmp / "out"
    assert refresh.main(["--input", str(manifest), "--output", str(out), "--threshold", "0", *FAST]) == 0
    return out, ids, reasons


@pytest.fixture(scope="module")
def ray_local_module():
    import ray

    from cluster.runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, num_gpus=0)
    yield ray


def test_every_sku_has_exactly_one_final_row_and_bad_input_fails_with_its_reason(accepted_run):
    out, ids, reasons = accepted_run
    rows = _results(out)
    by_id = {r["sku_id"]: r for r in rows}
    assert len(rows) == len(by_id)  # no SKU twice
    assert ids | set(reasons) <= set(by_id)
    assert len(rows) == len(ids) + len(reasons) + 2  # + the row without sku_id and the invalid JSON line
    for sku, reason in reasons.items():
        assert by_id[sku]["status"] == "failed" and reason in by_id[sku]["error"], (sku, by_id[sku]["error"])
    unnamed = [r for r in rows if r["sku_id"].startswith("<")]
    assert {("missing sku_id" in r["error"]) or ("invalid JSON" in r["error"]) for r in unnamed} == {True}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["duplicate_ids"] == 1
    assert summary["status"] == {"accepted": len(ids), "needs_review": 0, "failed": len(rows) - len(ids)}
    dup_log = [json.loads(line) for f in (out / "duplicates").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [d["sku_id"] for d in dup_log] == ["mug-002"]
    assert by_id["mug-002"]["status"] == "accepted"  # the first occurrence was processed, not the bad duplicate
    assert not (out / "_state").exists()  # a finished run leaves no staging behind


def test_threshold_everyone_passes_gives_one_attempt_and_pixel_exact_products(accepted_run):
    out, ids, _ = accepted_run
    by_id = {r["sku_id"]: r for r in _results(out)}
    cond = ConditioningConfig(size=32)
    for sku in ids:
        row = by_id[sku]
        assert row["status"] == "accepted" and row["attempts"] == 1 and row["defect"] is None
        image = np.array(Image.open(out / row["image_path"]))
        laid_out = condition_row(sku, Path(row["image_uri"]).read_bytes(), row["image_uri"], 1, cond, PromptPolicy())
        assert row["seed"] == laid_out["seed"] and row["prompt"] == laid_out["prompt"]
        product = laid_out["product_rgba"]
        solid = product[..., 3] == 255
        assert solid.sum() > 20
        assert (image[solid] == product[..., :3][solid]).all()
    assert len(_candidates(out)) == len(ids)


def test_dataset_folders_hold_only_parquet_that_standard_readers_open(accepted_run):
    """``results/`` and ``candidates/`` open as they are, the way a user would read them."""
    out, ids, _ = accepted_run
    for folder, rows in (("results", len(_results(out))), ("candidates", len(ids))):
        files = [p for p in (out / folder).rglob("*") if p.is_file()]
        assert files and all(p.suffix == ".parquet" for p in files), files
        assert pq.read_table(out / folder).num_rows == rows
        assert pq.read_table(str(out / folder)).num_rows == rows
        frame = pd.read_parquet(out / folder)
        assert len(frame) == rows and "image_path" in frame.columns
    frame = pd.read_parquet(str(out / "candidates"))
    assert all((out / p).is_file() for p in frame["image_path"])  # candidate images live beside, not inside


def test_threshold_nobody_passes_gives_needs_review_after_k(accepted_run, tmp_path, monkeypatch):
    out_ok, _, _ = accepted_run
    manifest, ids = _manifest(tmp_path)
    # A relative --output, from a working directory of its own: the paths in the manifests are relative to
    # the output folder, so the folder can be moved whole.
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    monkeypatch.chdir(job_dir)
    argv = ["--input", str(manifest), "--output", "nested/out", "--threshold", "1.0", "--max-attempts", "2", *FAST]
    with _generator_processes() as generators:
        assert refresh.main(argv) == 0
    # Two rounds, one generation actor: its model was loaded once for the run, not once per round.
    assert len(generators) == 1, generators
    out = tmp_path / "moved"
    shutil.move(job_dir / "nested" / "out", out)
    assert json.loads((out / "summary.json").read_text())["this_run"]["rounds"] == 2
    rows = _results(out)
    assert {r["sku_id"] for r in rows} == ids and len(rows) == len(ids)
    for row in rows:
        assert row["status"] == "needs_review" and row["attempts"] == 2 and row["defect"]
        assert not Path(row["image_path"]).is_absolute() and (out / row["image_path"]).is_file()
    candidates = _candidates(out)
    assert sorted((c["sku_id"], c["attempt"]) for c in candidates) == sorted((s, a) for s in ids for a in (1, 2))
    # Same --seed, same attempt: the same seed and prompt, and the same image up to float rounding. The
    # other run had bad rows in its batches, so its generator batches held other products; a batch's
    # composition may change the kernels' rounding, so one level is allowed, no more. (Bit-identity for the
    # same batch composition in one process: test_generation.py's same-seed test.)
    for row in rows:
        first = next(c for c in candidates if c["sku_id"] == row["sku_id"] and c["attempt"] == 1)
        accepted = next(r for r in _results(out_ok) if r["sku_id"] == row["sku_id"])
        assert (first["seed"], first["prompt"]) == (accepted["seed"], accepted["prompt"])
        a = np.array(Image.open(out / first["image_path"])).astype(np.int16)
        b = np.array(Image.open(out_ok / accepted["image_path"])).astype(np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, row["sku_id"]


@contextlib.contextmanager
def _generator_processes():
    """The ids of every process running a generation actor while the block runs."""
    seen: set[int] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "GenerateCandidates" in " ".join(proc.cmdline()):
                        seen.add(proc.pid)
                except psutil.Error:
                    continue
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def test_resources_the_cluster_lacks_fail_fast(tmp_path, capsys, ray_local_module):
    manifest, _ = _manifest(tmp_path)
    start = time.time()
    code = refresh.main(
        ["--input", str(manifest), "--output", str(tmp_path / "o"), "--gpus-per-generator", "1", *FAST]
    )
    assert code == 2 and time.time() - start < 30
    assert "asked for 1 GPU" in capsys.readouterr().err


def test_threshold_outside_0_1_is_refused_before_anything_starts(tmp_path, capsys, ray_local_module):
    manifest, _ = _manifest(tmp_path)
    assert refresh.main(["--input", str(manifest), "--output", str(tmp_path / "o"), "--threshold", "1.5", *FAST]) == 2
    assert "threshold must be in [0, 1]" in capsys.readouterr().err


def test_a_wrong_model_path_is_refused_before_any_work_starts(tmp_path, capsys, ray_local_module):
    """Found in the driver, named, exit 2: not as pool actors dying at start-up (which would be retried)."""
    manifest, _ = _manifest(tmp_path)
    for flag, named in (("--controlnet", "ControlNet folder not found"), ("--rfnet", "RFNet checkpoint")):
        start = time.time()
        argv = ["--input", str(manifest), "--output", str(tmp_path / "o"), flag, str(tmp_path / "nowhere"), *FAST]
        assert refresh.main(argv) == 2 and time.time() - start < 30
        err = capsys.readouterr().err
        assert named in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "o" / "results").exists()


def test_empty_input_is_a_clear_error(tmp_path, capsys, ray_local_module):
    (tmp_path / "empty.jsonl").write_text("")
    assert refresh.main(["--input", str(tmp_path / "empty.jsonl"), "--output", str(tmp_path / "o"), *FAST]) == 2
    assert "contains no SKUs" in capsys.readouterr().err


def test_a_killed_generation_actor_is_replaced_and_nothing_is_lost(tmp_path, ray_local_module):
    manifest, ids = _manifest(tmp_path, copies=2)
    out = tmp_path / "out"
    killed = []

    def kill_generator_once():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for proc in psutil.Process().children(recursive=True):
                try:
                    # Killed in the middle of a batch (its title names the call): the call must be retried.
                    if "GenerateCandidates" in (title := " ".join(proc.cmdline())) and ".run" in title:
                        proc.kill()
                        killed.append(proc.pid)
                        return
                except psutil.Error:
                    continue
            time.sleep(0.2)

    killer = threading.Thread(target=kill_generator_once)
    killer.start()
    code = refresh.main(
        ["--input", str(manifest), "--output", str(out), "--threshold", "0", "--gen-batch-size", "1", *FAST]
    )
    killer.join()
    assert killed, "the generation actor was never seen running"
    assert code == 0
    rows = _results(out)
    assert sorted(r["sku_id"] for r in rows) == sorted(ids)  # every SKU exactly once
    assert {r["status"] for r in rows} == {"accepted"}


def test_resume_after_the_driver_is_killed(tmp_path):
    manifest, ids = _manifest(tmp_path, copies=2)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "jobs.refresh",
        "--input",
        str(manifest),
        "--output",
        str(out),
        "--rfnet",
        "fixed-rate:0.5",
        "--max-attempts",
        "2",
        "--gen-batch-size",
        "1",
        "--num-cpus",
        "2",
        *FAST,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "results").glob("part-*.parquet")):
            time.sleep(0.2)
        assert driver.poll() is None, "the run ended before it could be killed"
        driver.send_signal(signal.SIGKILL)  # the driver only: no clean-up code runs
        driver.wait()
    finally:
        time.sleep(1)
        os.killpg(driver.pid, signal.SIGKILL) if _group_alive(driver.pid) else None  # the Ray it started
    done_before = {r["sku_id"] for r in _results(out)}
    assert 0 < len(done_before) < len(ids)
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = _results(out)
    assert sorted(r["sku_id"] for r in rows) == sorted(ids)  # exactly once each
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["skipped_already_done"] == len(done_before)
    for row in rows:
        assert row["status"] in ("accepted", "needs_review") and 1 <= row["attempts"] <= 2


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
