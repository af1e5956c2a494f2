"""``adloop serve``: the online RFNet scorer (``engine/serve.py``) on Ray Serve, in the foreground.

Starts (or joins, with ``RAY_ADDRESS``) Ray, binds Serve's HTTP proxy to ``--host:--port`` and runs the
app until interrupted. For a managed deployment whose threshold and checkpoint can change live, use
``serve deploy cluster/serve_config.yaml`` instead.

Example::

    adloop serve --rfnet tiny --port 8000 --token-file ~/.adloop-token
    curl -H "Authorization: Bearer $(cat ~/.adloop-token)" -d @request.json http://127.0.0.1:8000/v1/score
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from jobs import args as opts
from jobs.args import add, job_parser
from jobs.config import parse

logger = logging.getLogger("adloop.serve")
PORT = 8000


# Old spellings of this job, kept for one release: refresh's --num-cpus is the local Ray's CPUs, not a replica's.
_OLD_SPELLINGS = {"--num-cpus": "--cpus-per-replica", "--num-gpus": "--gpus-per-replica"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop serve", __doc__)
    for option in (opts.RFNET, opts.THRESHOLD, opts.DEPTH, opts.SALIENCY, opts.DEVICE):
        option.add(p)
    opts.HOST.add(p)
    opts.PORT.add(p, recipe_default=PORT)
    opts.TOKEN_FILE.add(p)
    add(
        p,
        "--allow-uri-root",
        action="append",
        default=[],
        metavar="URI",
        help="fsspec URI prefix images may be read from (repeatable; default: URIs refused)",
    )
    add(p, "--max-batch-size", type=int, default=16, help="requests per model call")
    add(p, "--batch-wait-ms", type=float, default=10.0, help="wait for a fuller batch, ms")
    add(p, "--min-replicas", type=int, default=1, help="fewest replicas the autoscaler keeps")
    add(p, "--max-replicas", type=int, default=1, help="most replicas the autoscaler starts")
    add(p, "--cpus-per-replica", type=float, default=1.0, help="CPUs per replica [old spelling: --num-cpus]")
    add(
        p,
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="GPUs per replica (1 on GPU nodes) [old spelling: --num-gpus]",
    )
    add(p, "--max-body-mb", type=float, default=32.0, help="largest request body, MiB")
    add(p, "--max-pixels", type=int, default=2048 * 2048, help="largest image, w x h")
    opts.RAY_ADDRESS.add(p)
    argv = [_OLD_SPELLINGS.get(a, a) for a in (argv if argv is not None else sys.argv[1:])]
    return parse(p, argv)


def serve_args(args: argparse.Namespace) -> dict:
    """The ``engine.serve.ServeArgs`` fields the command line sets."""
    return {
        "checkpoint": args.rfnet,
        "threshold": args.threshold,
        "depth": args.depth,
        "saliency": args.saliency,
        "device": args.device,
        "token_file": args.token_file,
        "allowed_uri_roots": args.allow_uri_root,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_ms / 1000.0,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "num_cpus": args.cpus_per_replica,
        "num_gpus": args.gpus_per_replica,
        "max_body_bytes": int(args.max_body_mb * 1024 * 1024),
        "max_pixels": args.max_pixels,
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # Validate everything before starting Ray: a typo should cost milliseconds, not a cluster start.
    from engine.serve import ServeArgs, build_app

    app_args = ServeArgs.model_validate(serve_args(args))
    from ray import serve

    from cluster.runtime import init_ray

    init_ray(address=args.ray_address)
    # SIGTERM (what Kubernetes and `kill` send) takes the same clean path as Ctrl-C; installed after Ray's own.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": args.host, "port": args.port or PORT})
        serve.run(build_app(app_args), name="rfnet-scorer", route_prefix="/")
        logger.info("scoring on http://%s:%d/v1/score (Ctrl-C or SIGTERM stops)", args.host, args.port or PORT)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("shutting down")
    finally:
        serve.shutdown()
    return 0
