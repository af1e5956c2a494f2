"""``ReviewConfig``, apart from ``engine.review`` so that ``adloop review --help`` can show its defaults
without importing pyarrow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReviewConfig:
    """How the review session is drawn."""

    audit: int = 50
    """Auto-accepted SKUs in the audit sample (frozen in session.json when the review first opens)."""
    seed: int = 0
    """Seed of the audit sample: the SKUs with the smallest hash of (seed, id)."""

    def __post_init__(self) -> None:
        if self.audit < 0:
            raise ValueError("audit must be >= 0")
