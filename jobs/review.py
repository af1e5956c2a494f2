"""``adloop review OUT``: a web page for a person to review one refresh output; ``adloop review export``.

    adloop review OUT [--host 127.0.0.1] [--port 8080] [--token-file F] [--audit 50] [--seed 0]
    adloop review export OUT --to DIR [--depth tiny] [--saliency tiny]

The page shows the needs_review queue and a fixed random sample of auto-accepted SKUs (the audit), each
with its product cutout, caption and every candidate with P(Available) and the predicted defect. Labels
are saved under OUT/review/ as they are made, and decisions become the SKUs' final rows at once. With
``--token-file``, open the page as ``http://HOST:PORT/#token=<token>``. When the server stops, it
rebuilds OUT/report.html, which then shows the reviewed counts and the audit precision.

``export`` writes the labels as an RF1M-format set: ``adloop train-rfnet --data DIR`` trains on it as it
is, alone or next to other sets (``--data A --data B``), and ``--init-from CHECKPOINT`` fine-tunes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.review_config import ReviewConfig
from jobs import args as opts
from jobs.args import add, job_parser
from jobs.config import parse

PORT = 8080


def _serve_parser() -> argparse.ArgumentParser:
    p = job_parser("adloop review", __doc__)
    opts.REFRESH_OUTPUT.add(p)
    opts.HOST.add(p)
    opts.PORT.add(p, recipe_default=PORT)
    opts.TOKEN_FILE.add(p)
    add(p, "--audit", type=int, default=ReviewConfig.audit, help="auto-accepted SKUs to audit")
    opts.SEED.add(p)
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = job_parser("adloop review export", "write the review's labels as an RF1M set")
    opts.REFRESH_OUTPUT.add(p)
    add(p, "--to", required=True, metavar="DIR", help="destination folder of the RF1M-format set")
    opts.DEPTH.add(p)
    opts.SALIENCY.add(p)
    return p


def _export(argv: list[str]) -> int:
    args = parse(_export_parser(), argv)
    from engine.review import ReviewError, ReviewSession
    from engine.review_export import ExportConfig, export

    try:
        session = ReviewSession(args.output)
        result = export(session, ExportConfig(to=args.to, depth=args.depth, saliency=args.saliency))
    except ReviewError as err:
        print(f"adloop review export: error: {err.detail}", file=sys.stderr)
        return 2
    print(json.dumps(result | {"to": args.to}))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    args = parse(_serve_parser(), argv)
    port = args.port or PORT
    from engine.review import ReviewError, ReviewSession

    try:
        session = ReviewSession(args.output, ReviewConfig(audit=args.audit, seed=args.seed))
    except (ReviewError, ValueError) as err:
        print(f"adloop review: error: {getattr(err, 'detail', err)}", file=sys.stderr)
        return 2
    import uvicorn

    from engine.report import write_report
    from engine.review_app import create_app

    def rebuild_report() -> None:
        print(f"report updated: {write_report(session.out)}", flush=True)

    try:
        app = create_app(session, args.token_file, on_shutdown=rebuild_report)
    except (OSError, ValueError) as err:
        print(f"adloop review: error: {err}", file=sys.stderr)
        return 2
    progress = session.progress()
    print(
        f"reviewing {session.out}: {progress['review']['total']} SKUs in the queue, {progress['audit']['total']} "
        f"in the audit; open http://{args.host}:{port}/",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
