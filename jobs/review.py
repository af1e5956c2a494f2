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

from engine.review import ReviewConfig, ReviewError, ReviewSession


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adloop review", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("output", metavar="OUT", help="a refresh's output root")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--token-file", default=None, help="file holding the bearer token every request must carry")
    d = ReviewConfig()
    p.add_argument("--audit", type=int, default=d.audit, help=f"auto-accepted SKUs to audit (default {d.audit})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the audit sample (default 0)")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adloop review export", description="write the review's labels as an RF1M set")
    p.add_argument("output", metavar="OUT", help="a refresh's output root with a review under OUT/review/")
    p.add_argument("--to", required=True, metavar="DIR", help="destination folder of the RF1M-format set")
    p.add_argument("--depth", default="tiny", help="depth model the scorer used (default tiny)")
    p.add_argument("--saliency", default="tiny", help="saliency model the scorer used (default tiny)")
    return p


def _export(argv: list[str]) -> int:
    from engine.review_export import ExportConfig, export

    args = _export_parser().parse_args(argv)
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
    args = _serve_parser().parse_args(argv)
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
        f"in the audit; open http://{args.host}:{args.port}/",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
