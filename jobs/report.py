"""``adloop report OUT``: rebuild OUT/report.html from OUT's results/, candidates/ and summary.json.

Every refresh writes the report when it ends; this rebuilds it (after a resumed or interrupted run,
or with other section sizes). It streams the Parquet data and opens only the images it shows, so it
runs in seconds on a 100k-SKU output and needs no Ray.
"""

from __future__ import annotations

import argparse
import logging
import sys

from engine.report_config import ReportConfig
from jobs import args as opts
from jobs.args import add, job_parser
from jobs.config import parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop report", __doc__)
    opts.REFRESH_OUTPUT.add(p)
    d = ReportConfig()
    add(p, "--gallery", type=int, default=d.gallery, help=f"accepted SKUs shown (default {d.gallery})")
    add(p, "--review", type=int, default=d.review, help=f"needs_review SKUs shown (default {d.review})")
    add(
        p,
        "--candidates-per-sku",
        type=int,
        default=d.candidates_per_sku,
        help=f"candidates shown per review SKU (default {d.candidates_per_sku})",
    )
    add(p, "--failed", type=int, default=d.failed, help=f"failed SKUs listed (default {d.failed})")
    add(p, "--thumb-px", type=int, default=d.thumb_px, help=f"thumbnail side in px (default {d.thumb_px})")
    return parse(p, argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from cluster.storage import exists, join
    from engine.report import write_report

    if not exists(join(args.output, "results")):
        print(f"adloop report: error: {args.output} has no results/ (is it a refresh output?)", file=sys.stderr)
        return 2
    try:
        cfg = ReportConfig(
            gallery=args.gallery,
            review=args.review,
            candidates_per_sku=args.candidates_per_sku,
            failed=args.failed,
            thumb_px=args.thumb_px,
        )
    except ValueError as err:
        print(f"adloop report: error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {write_report(args.output, cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
