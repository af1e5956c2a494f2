"""The run report: built at the end of a real (tiny) refresh, rendered in headless Chromium, and kept
small for a 100k-SKU output by streaming and sampling."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.outputs import CANDIDATE_SCHEMA, RESULT_SCHEMA, complete_parts
from engine.report import ReportConfig, build_report, failure_reason, sample_key, write_report
from engine.report_html import esc
from engine.samples import SAMPLES_DIR
from jobs import refresh, report

FAST = ["--size", "32", "--steps", "2", "--no-progress", "--num-cpus", "2"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One refresh with every status: 4 sample products under a scorer that accepts half the candidates
    (two accepted, two left for review), plus two inputs that fail. One attempt keeps it to one round:
    each round starts its actor pools afresh, which is most of the time here; the 100k test below
    covers charts over several attempts."""
    tmp = tmp_path_factory.mktemp("report")
    lines = [
        {"sku_id": sku, "image_uri": str(next(SAMPLES_DIR.glob(f"{sku}.*")))}
        for sku in ("bottle-001", "mug-002", "lamp-003", "chair-004")
    ]
    lines += [
        {"sku_id": "gone-404", "image_uri": str(tmp / "missing.png")},
        {"sku_id": "has/slash", "image_uri": lines[0]["image_uri"]},
    ]
    manifest = tmp / "skus.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp / "out"
    args = ["--input", str(manifest), "--output", str(out), "--rfnet", "fixed-rate:0.5", "--max-attempts", "1"]
    assert refresh.main(args + FAST) == 0
    return out


def _chromium(out: Path, tmp: Path, *mode: str) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is missing: `make test` installs it (apt-get install -y chromium)"
    profile = tmp / f"profile-{time.monotonic_ns()}"
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2000", *mode]
    done = subprocess.run([*cmd, (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _headline(dom: str) -> dict[str, str]:
    return dict(re.findall(r'<div class="kpi[^"]*" data-key="(\w+)"><div class="v">([^<]*)</div>', dom))


def _close(text: str, value: float, scale: float = 1.0) -> bool:
    """``text`` shows ``value`` (in units of ``scale``) rounded to the digits it has."""
    number = text.replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return abs(float(number) - value / scale) <= 0.5 * 10**-decimals + 1e-9


def _shows_seconds(text: str, seconds: float) -> bool:
    number, unit = text.split()
    return _close(number, seconds, {"s": 1, "min": 60, "h": 3600}[unit])


def test_the_refresh_writes_the_report_and_adloop_report_rebuilds_it(run):
    page = run / "report.html"
    assert page.is_file() and "adloop run report" in page.read_text()
    page.unlink()
    assert report.main([str(run)]) == 0
    assert page.is_file()
    assert report.main([str(run.parent / "not-an-output")]) == 2


def test_chromium_renders_a_non_blank_page_whose_headline_equals_the_summary(run, tmp_path):
    summary = json.loads((run / "summary.json").read_text())
    assert all(summary["status"][s] > 0 for s in ("accepted", "needs_review", "failed")), summary["status"]

    _chromium(run, tmp_path, f"--screenshot={tmp_path / 'shot.png'}")
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))
    assert shot.shape[:2] == (2000, 1280)
    colours, counts = np.unique(shot.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 500 and counts.max() / counts.sum() < 0.9, "the screenshot is (nearly) blank"

    shown = _headline(_chromium(run, tmp_path, "--dump-dom"))
    assert int(shown["skus"].replace(",", "")) == summary["skus"]
    for status in ("accepted", "needs_review", "failed"):
        assert int(shown[status].replace(",", "")) == summary["status"][status]
    assert _close(shown["first_attempt_acceptance"].rstrip("%"), summary["first_attempt_acceptance"], 0.01)
    assert _close(shown["mean_attempts_per_accepted"], summary["mean_attempts_per_accepted"])
    assert _close(shown["images_per_second"], summary["this_run"]["images_per_second"])
    assert _shows_seconds(shown["wall_seconds"], summary["wall_seconds"])
    for model in summary["models"].values():
        if model:
            assert esc(model) in (run / "report.html").read_text()


def _links(page: str) -> tuple[list[str], list[str]]:
    hrefs = [h for h in re.findall(r'href="([^"]*)"', page) if not h.startswith("#")]
    srcs = re.findall(r'src="([^"]*)"', page)
    return hrefs, srcs


def test_every_image_link_resolves_and_the_page_is_self_contained(run):
    page = (run / "report.html").read_text()
    hrefs, srcs = _links(page)
    assert hrefs and srcs
    for link in hrefs:
        assert "://" not in link and not link.startswith("/"), f"not a relative link: {link}"
        assert (run / unquote(link)).resolve().is_file(), f"dangling link: {link}"
    for src in srcs:
        assert src.startswith("data:image/"), f"not embedded: {src[:80]}"
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_sections_show_every_sku_of_a_small_run_with_its_candidates(run):
    page = (run / "report.html").read_text()
    results = pq.read_table(complete_parts(str(run / "results"))).to_pylist()
    candidates = pq.read_table(complete_parts(str(run / "candidates"))).to_pylist()
    accepted = [r for r in results if r["status"] == "accepted"]
    assert page.count('<figure class="tile">') == len(accepted)
    for r in accepted:
        assert f'href="{r["image_path"]}"' in page
    # the review queue: every candidate of a needs_review SKU with its P(Available) and defect, beside the cutout
    review = [r for r in results if r["status"] == "needs_review"]
    assert page.count('<div class="review">') == len(review)
    for r in review:
        for c in (c for c in candidates if c["sku_id"] == r["sku_id"]):
            assert f'href="{c["image_path"]}"' in page
            assert f"P(Available) {c['p_available']:.3f}" in page
            assert esc(c["defect"]) in page
    # the failed SKUs, each with its reason
    for r in (r for r in results if r["status"] == "failed"):
        assert esc(r["sku_id"]) in page and esc(r["error"]) in page
    assert ">missing_file<" in page and ">invalid_sku_id<" in page


def test_a_moved_output_still_links_inside_itself(run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert report.main([str(moved)]) == 0
    inside = [link for link in _links((moved / "report.html").read_text())[0] if not link.startswith("..")]
    assert inside == [link for link in _links((run / "report.html").read_text())[0] if not link.startswith("..")]
    assert len(inside) >= 4 and all((moved / unquote(link)).is_file() for link in inside)


def test_failure_reasons_and_sampling_are_exact():
    assert failure_reason("/x/a.png: missing_file (No such file)") == "missing_file"
    assert failure_reason("/x/b.png: too_small (4x4 < 16)") == "too_small"
    assert failure_reason("invalid_sku_id: the id contains '/'") == "invalid_sku_id"
    assert failure_reason("line 12: invalid JSON (Expecting value)") == "invalid JSON"
    assert failure_reason("missing sku_id") == "missing sku_id"
    assert failure_reason(None) == "unknown"
    assert sample_key("mug-002") == sample_key("mug-002") != sample_key("mug-003")
    assert esc("nul\x00<b>") == "nul\ufffd&lt;b&gt;"


def _synthetic_output(out: Path, n: int, parts: int = 5) -> dict[str, int]:
    """A 100k-SKU output without generating anything: Parquet rows whose images are a few shared files."""
    rng = np.random.default_rng(0)
    for folder in ("images", "candidate_images"):
        (out / folder).mkdir(parents=True)
    for i in range(3):  # smooth, photo-like 256 px images: realistic thumbnail sizes
        y, x = np.mgrid[0:256, 0:256]
        img = np.stack([(x + 40 * i) % 256, (y * 2) % 256, (x + y) // 2], -1).astype(np.uint8)
        Image.fromarray(img).save(out / "images" / f"shared-{i}.png")
        Image.fromarray(img[::-1]).save(out / "candidate_images" / f"shared-{i}.png")
    index = np.arange(n)
    sku = np.array([f"sku-{i:06d}" for i in index], dtype=object)
    status = rng.choice(np.array(["accepted", "needs_review", "failed"], dtype=object), size=n, p=[0.7, 0.25, 0.05])
    attempts = np.where(status == "failed", 0, np.where(status == "needs_review", 5, rng.integers(1, 6, size=n)))
    ok_row = attempts > 0
    image = np.array([f"images/shared-{i}.png" for i in range(3)], dtype=object)[index % 3]
    results = {
        "sku_id": sku,
        "status": status,
        "image_path": np.where(ok_row, image, ""),
        "attempts": attempts.astype(np.int32),
        "p_available": pa.array(np.full(n, 0.5, np.float32), mask=~ok_row),
        "error": pa.array(np.array([f"/in/{s}.png: missing_file (gone)" for s in sku], dtype=object), mask=ok_row),
        "image_uri": np.array([f"/in/{s}.png" for s in sku], dtype=object),
    }
    # one candidate per attempt; a SKU's last one is the accepted one when the SKU was accepted
    row = np.repeat(index, attempts)
    attempt = np.concatenate([np.arange(1, k + 1) for k in attempts]).astype(np.int32)
    accepted = (status[row] == "accepted") & (attempt == attempts[row])
    defects = np.array(["Unsuitable", "Space Mismatch", "Size Mismatch", "Indistinctiveness", "Shape Hallucination"])
    cand_images = np.array([f"candidate_images/shared-{i}.png" for i in range(3)], dtype=object)
    candidates = {
        "sku_id": sku[row],
        "attempt": attempt,
        "p_available": np.where(accepted, 0.9, 0.1).astype(np.float32),
        "defect": defects[(row + attempt) % 5],
        "accepted": accepted,
        "image_path": cand_images[(row + attempt) % 3],
    }
    for name, columns, schema in (("results", results, RESULT_SCHEMA), ("candidates", candidates, CANDIDATE_SCHEMA)):
        table = pa.table({f.name: columns.get(f.name, pa.nulls(len(columns["sku_id"]), f.type)) for f in schema})
        table = table.cast(schema)
        (out / name).mkdir(exist_ok=True)
        for i, chunk in enumerate(np.array_split(np.arange(len(table)), parts)):
            pq.write_table(table.take(chunk), out / name / f"part-{i:03d}.parquet")
    counts = {s: int((status == s).sum()) for s in ("accepted", "needs_review", "failed")}
    return {**counts, "candidates": len(row)}


def test_a_100k_sku_report_stays_small_and_builds_by_streaming(tmp_path):
    out = tmp_path / "big"
    counts = _synthetic_output(out, 100_000)
    cfg = ReportConfig()
    tracemalloc.start()
    start = time.time()
    page = build_report(str(out), cfg)
    seconds = time.time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    size_mb = len(page.encode()) / 2**20
    assert size_mb < 3, f"report is {size_mb:.1f} MB"
    # Bounded by the samples, not the catalog: loading the 100k result rows as Python dicts takes ~125 MB.
    assert peak < 16 * 2**20, f"peak Python memory {peak / 2**20:.0f} MB"
    assert seconds < 60
    assert page.count('<figure class="tile">') == cfg.gallery
    assert page.count('<div class="review">') == cfg.review
    assert page.count('<figure class="tile cand') == cfg.review * min(5, cfg.candidates_per_sku)
    assert f"Showing {cfg.gallery} of {counts['accepted']:,} accepted SKUs" in page
    assert f"Showing {cfg.failed} of {counts['failed']:,} failed SKUs" in page
    # counts come from the whole stream (no summary.json here: it is recomputed from the Parquet data)
    assert f'data-key="accepted"><div class="v">{counts["accepted"]:,}<' in page
    assert f"{counts['failed']:,}</td>" in page  # every failure has the one reason
    assert all(f"attempt {a}</text>" in page for a in range(1, 6))  # the acceptance chart has a bar per attempt
    # the sample is deterministic: a rebuild shows the same SKUs
    again = build_report(str(out), cfg)
    strip = re.compile(r"built [^&]*&")
    assert strip.sub("", again) == strip.sub("", page)
    write_report(str(out), cfg)
    assert (out / "report.html").stat().st_size == len(page.encode())
