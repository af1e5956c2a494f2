"""``ReportConfig``, apart from ``engine.report`` so that ``adloop report --help`` can show its defaults
without importing pyarrow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    """How much of each section the page shows; every section also states its full count."""

    gallery: int = 48
    """Accepted SKUs shown in the gallery (a deterministic sample of all accepted ones)."""
    review: int = 20
    """needs_review SKUs shown in the review queue, each with its candidates."""
    candidates_per_sku: int = 8
    """Candidates shown per review SKU (lowest attempt numbers first); the rest are counted."""
    failed: int = 200
    """Failed SKUs listed with their reasons (first ids in sort order); every reason is counted."""
    thumb_px: int = 128
    """Longest side of an embedded thumbnail, in px."""
    batch_rows: int = 8192
    """Rows per Arrow batch while streaming the Parquet folders."""

    def __post_init__(self):
        if min(self.gallery, self.review, self.candidates_per_sku, self.failed) < 0:
            raise ValueError("report section sizes must be >= 0")
        if self.thumb_px < 16 or self.batch_rows < 1:
            raise ValueError("thumb_px must be >= 16 and batch_rows >= 1")
