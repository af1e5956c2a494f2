"""The run report: ``OUT/report.html``, the page a catalog manager reads the morning after a refresh.

One self-contained HTML file: inline CSS, inline SVG charts, thumbnails embedded as small JPEG/WebP
data URIs, and relative links to the full images under OUT (so the folder can be moved or copied
whole). No script, no CDN, no network.

It stays a few MB whatever the catalog size: each section shows a bounded, deterministic sample
(the SKUs with the smallest hash of their id, so a rebuild shows the same ones) next to its full
count, and building it streams over ``results/`` and ``candidates/`` in Arrow batches; only the
sampled rows and a few counters are ever held, and only the sampled images are opened.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from cluster.storage import exists, join, read_bytes, write_bytes_atomic
from engine.outputs import STATUSES, iter_column_batches, summarise
from engine.report_config import ReportConfig
from engine.report_html import render
from engine.review import review_summary

logger = logging.getLogger(__name__)


# A failed row's reason; distinct reasons beyond this many are counted as "other" so memory stays bounded.
MAX_REASONS = 50
_REASON_CODE = re.compile(r":\s([a-z]+_[a-z_]+)\s\(|^([a-z]+_[a-z_]+):")
_LINE_PREFIX = re.compile(r"^line \d+:\s*")


def failure_reason(error: str | None) -> str:
    """The short reason of a failed row's error: its reason code where it has one (``missing_file`` from
    ``"a.png: missing_file (...)"``, ``invalid_sku_id`` from ``"invalid_sku_id: ..."``), else the message
    without line numbers and details."""
    error = (error or "").strip()
    match = _REASON_CODE.search(error)
    if match:
        return match.group(1) or match.group(2)
    return re.sub(r"\s*\(.*\)$", "", _LINE_PREFIX.sub("", error))[:60] or "unknown"


def sample_key(sku_id: str) -> int:
    """A stable pseudo-random rank for a SKU: sections show the SKUs with the smallest keys."""
    return int.from_bytes(hashlib.blake2b(sku_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class _Smallest:
    """The ``n`` rows with the smallest keys seen in a stream (a bounded max-heap on the key)."""

    def __init__(self, n: int):
        self.n = n
        self._heap: list[tuple[_Desc, int, dict]] = []
        self._pushed = 0

    def wants(self, key) -> bool:
        return self.n > 0 and (len(self._heap) < self.n or key < self._heap[0][0].key)

    def push(self, key, row: dict) -> None:
        self._pushed += 1  # a tie-breaker, so the heap never compares rows
        entry = (_Desc(key), self._pushed, row)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def rows(self) -> list[dict]:
        return [row for _, _, row in sorted(self._heap, key=lambda e: e[0].key)]


@dataclass
class _Desc:
    """Reverses the order of a key, turning heapq's min-heap into the max-heap ``_Smallest`` needs."""

    key: int | str

    def __lt__(self, other: _Desc) -> bool:
        return other.key < self.key


@dataclass
class Scan:
    """What one streaming pass over results/ and candidates/ keeps: counters and the sampled rows."""

    status: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    """failed SKUs per short reason (at most MAX_REASONS distinct, then "other")"""
    gallery: list[dict] = field(default_factory=list)
    review: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    generated: Counter = field(default_factory=Counter)
    """candidates per attempt number"""
    accepted: Counter = field(default_factory=Counter)
    """accepted candidates per attempt number"""
    defects: Counter = field(default_factory=Counter)
    """rejected candidates per defect class"""
    review_candidates: dict[str, list[dict]] = field(default_factory=dict)


RESULT_COLUMNS = [
    "sku_id",
    "status",
    "image_path",
    "attempts",
    "p_available",
    "defect",
    "error",
    "image_uri",
    "caption",
]
CANDIDATE_COLUMNS = ["sku_id", "attempt", "p_available", "defect", "accepted", "image_path"]


def _scan_results(out: str, cfg: ReportConfig, scan: Scan) -> None:
    samples = {"accepted": _Smallest(cfg.gallery), "needs_review": _Smallest(cfg.review)}
    failed = _Smallest(cfg.failed)
    for batch in iter_column_batches(join(out, "results"), RESULT_COLUMNS, cfg.batch_rows):
        for item in pc.value_counts(batch.column("status")).to_pylist():
            scan.status[item["values"]] += item["counts"]
        for status, sample in samples.items():
            rows = batch.filter(pc.equal(batch.column("status"), status))
            # Only a row that enters the sample becomes a Python dict.
            for i, sku in enumerate(rows.column("sku_id").to_pylist()):
                key = sample_key(sku)
                if sample.wants(key):
                    sample.push(key, rows.slice(i, 1).to_pylist()[0])
        rows = batch.filter(pc.equal(batch.column("status"), "failed"))
        errors = rows.column("error").to_pylist()
        for i, (sku, error) in enumerate(zip(rows.column("sku_id").to_pylist(), errors, strict=True)):
            reason = failure_reason(error)
            if reason not in scan.reasons and len(scan.reasons) >= MAX_REASONS:
                reason = "other"
            scan.reasons[reason] += 1
            if failed.wants(sku):
                failed.push(sku, rows.slice(i, 1).to_pylist()[0])
    scan.gallery, scan.review = samples["accepted"].rows(), samples["needs_review"].rows()
    scan.failed = failed.rows()


def _scan_candidates(out: str, cfg: ReportConfig, scan: Scan) -> None:
    review_ids = pa.array(sorted(r["sku_id"] for r in scan.review), pa.string())
    for batch in iter_column_batches(join(out, "candidates"), CANDIDATE_COLUMNS, cfg.batch_rows):
        ok = pc.fill_null(batch.column("accepted"), False)
        per_attempt = pa.table({"attempt": batch.column("attempt"), "ok": pc.cast(ok, pa.int64())})
        for row in per_attempt.group_by("attempt").aggregate([("ok", "sum"), ("ok", "count")]).to_pylist():
            scan.generated[int(row["attempt"])] += row["ok_count"]
            scan.accepted[int(row["attempt"])] += row["ok_sum"]
        for item in pc.value_counts(pc.filter(batch.column("defect"), pc.invert(ok))).to_pylist():
            scan.defects[item["values"] or "(none)"] += item["counts"]
        if len(review_ids):
            for row in batch.filter(pc.is_in(batch.column("sku_id"), value_set=review_ids)).to_pylist():
                scan.review_candidates.setdefault(row["sku_id"], []).append(row)
    for rows in scan.review_candidates.values():
        rows.sort(key=lambda r: (r["attempt"], r["image_path"] or ""))


def load_summary(out: str) -> dict:
    """summary.json, or (for an output whose run never finished) the counts recomputed from disk."""
    uri = join(out, "summary.json")
    if exists(uri):
        return json.loads(read_bytes(uri))
    logger.warning("%s has no summary.json; recomputing counts from results/ and candidates/", out)
    return summarise(out, {})


def build_report(out: str, cfg: ReportConfig | None = None) -> str:
    """Build the report page for the refresh output ``out`` (a local path or fsspec URI).

    Args:
        out: the refresh's output root, holding ``results/``, ``candidates/`` and ``summary.json``.
        cfg: section sizes and thumbnail size.

    Returns:
        The HTML page as a string; links in it are relative to ``out``.
    """
    cfg = cfg or ReportConfig()
    summary = load_summary(out)
    scan = Scan()
    _scan_results(out, cfg, scan)
    _scan_candidates(out, cfg, scan)
    # Counts by status come from results/ as it is now: a review changes them after summary.json was written.
    summary = {**summary, "status": {s: scan.status[s] for s in STATUSES}, "review": review_summary(out)}
    return render(out, summary, scan, cfg)


def write_report(out: str, cfg: ReportConfig | None = None) -> str:
    """Build the report and write it atomically to ``out/report.html``; returns that URI."""
    start = time.time()
    page = build_report(out, cfg)
    uri = join(out, "report.html")
    write_bytes_atomic(uri, page.encode("utf-8"))
    logger.info("report: %s (%.1f kB, %.1f s)", uri, len(page) / 1024, time.time() - start)
    return uri
