"""Load test of the online scorer: p50/p99 latency and requests/s at 1, 8 and 32 concurrent clients, with
``@serve.batch`` on (``--max-batch-size``) versus off (batch size 1), side by side in one run.

Both variants run as two Serve apps on one local Ray (loopback only, a free port), each with one replica of
the same RFNet checkpoint. Cells are interleaved (unbatched, batched at 1 client; batched, unbatched at 8;
...) so a noisy neighbour hits both alike; the ratio is the figure to trust. Each cell warms up, then runs
closed-loop clients for ``--duration`` seconds; the whole run is bounded by ``--time-limit``.

The default model is ``small``: an RFNet bigger than ``tiny`` (128 px inputs, width 64, a three-stage ResNet),
saved to a temporary checkpoint folder, so that model compute, not HTTP, dominates each request.

Usage: ``python bench/serve_load.py [--rfnet small|tiny|FOLDER] [--duration 15] [--clients 1,8,32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import socket
import tempfile
import time

import numpy as np
from PIL import Image

SMALL = {
    "image_size": 128,
    "width": 64,
    "heads": 4,
    "fusion_layers": 2,
    "image_encoder": {"embedding_size": 32, "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "layer_type": "basic"},
}


def _checkpoint(name: str, folder: str) -> str:
    if name != "small":
        return name
    import rfnet

    model, _ = rfnet.build(rfnet.preset("tiny").replace(**SMALL))
    rfnet.save(model, folder)
    return folder


def _bodies(side: int, n: int = 8) -> list[bytes]:
    from engine.samples import SAMPLES_DIR

    products = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix == ".png")
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        product = Image.open(products[i % len(products)]).convert("RGBA").resize((side, side))
        buf = io.BytesIO()
        product.save(buf, format="PNG")
        gen = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(gen, format="PNG")
        body = {
            "product": {"b64": base64.b64encode(buf.getvalue()).decode()},
            "generated": {"b64": base64.b64encode(gen.getvalue()).decode()},
            "caption": f"product number {i} on a wooden table",
        }
        out.append(json.dumps(body).encode())
    return out


def _model_ceiling(checkpoint: str, side: int, batch: int, threads: int, seconds: float = 10.0) -> dict:
    """In-process ``Scorer.score`` ms per image at batch 1 and at ``batch``: the most batching can give here."""
    import torch

    import rfnet

    torch.set_num_threads(threads)
    scorer = rfnet.Scorer(checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    out = {}
    for b in (1, batch):
        product = rng.integers(0, 256, (b, side, side, 4), dtype=np.uint8)
        generated = rng.integers(0, 256, (b, side, side, 3), dtype=np.uint8)
        captions = ["product on a wooden table"] * b
        scorer.score(product, generated, captions)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            scorer.score(product, generated, captions)
            n += b
        out[b] = (time.perf_counter() - t0) / n * 1000.0
    return {"ms_per_image_b1": out[1], f"ms_per_image_b{batch}": out[batch], "ratio": out[1] / out[batch]}


async def _cell(url: str, bodies: list[bytes], clients: int, warmup: float, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + duration

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        k = i
        while (now := time.perf_counter()) < end:
            async with session.post(
                url, data=bodies[k % len(bodies)], headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()
                ok = r.status == 200
            done = time.perf_counter()
            if now >= start:  # count requests that started after the warm-up
                latencies.append(done - now)
                errors += not ok
            k += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rfnet", default="small", help="small (default, built here) | tiny | a checkpoint folder")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels (default 1,8,32)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per cell (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per cell (default 3)")
    p.add_argument("--side", type=int, default=128, help="side of the product and generated images, px (default 128)")
    p.add_argument("--max-batch-size", type=int, default=32, help="batched variant's max batch (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="batched variant's wait, ms (default 5)")
    p.add_argument("--replica-cpus", type=float, default=2.0, help="CPUs (torch threads) per replica (default 2)")
    p.add_argument("--time-limit", type=float, default=600.0, help="stop starting cells after this many seconds")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    t_begin = time.perf_counter()

    import ray
    from ray import serve

    from cluster.runtime import init_ray
    from engine.serve import ServeArgs, build_app

    tmp = tempfile.mkdtemp(prefix="serve-bench-")
    checkpoint = _checkpoint(args.rfnet, tmp)
    ceiling = _model_ceiling(checkpoint, args.side, args.max_batch_size, max(1, int(args.replica_cpus)))
    print(
        f"model alone: {ceiling['ms_per_image_b1']:.1f} ms/image at batch 1, "
        f"{ceiling[f'ms_per_image_b{args.max_batch_size}']:.1f} at batch {args.max_batch_size} "
        f"({ceiling['ratio']:.2f}x: the most batching can give on this machine)",
        flush=True,
    )
    # Logical CPUs: two replicas of replica_cpus each; only one is busy at a time.
    init_ray(num_cpus=int(2 * args.replica_cpus), num_gpus=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    variants = {"unbatched": 1, "batched": args.max_batch_size}
    for name, batch in variants.items():
        app_args = ServeArgs(
            checkpoint=checkpoint,
            device="cpu",
            max_batch_size=batch,
            batch_wait_timeout_s=args.batch_wait_ms / 1000.0 if batch > 1 else 0.0,
            max_ongoing_requests=max(64, 2 * max(levels)),
            num_cpus=args.replica_cpus,
        )
        serve.run(build_app(app_args), name=name, route_prefix=f"/{name}")
    bodies = _bodies(args.side)
    # First calls are slow (lazy torch/allocator set-up): warm both replicas at every batch shape they will see.
    for name in variants:
        for clients in levels:
            asyncio.run(_cell(f"http://127.0.0.1:{port}/{name}/v1/score", bodies, clients, 0.0, 1.0))
    results: dict[str, dict[int, dict]] = {name: {} for name in variants}
    try:
        for i, clients in enumerate(levels):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in order:
                if time.perf_counter() - t_begin > args.time_limit:
                    break
                url = f"http://127.0.0.1:{port}/{name}/v1/score"
                results[name][clients] = r = asyncio.run(_cell(url, bodies, clients, args.warmup, args.duration))
                print(
                    f"{name:>9} clients={clients:<3} rps={r['rps']:7.2f} p50={r['p50_ms']:8.1f} ms "
                    f"p99={r['p99_ms']:8.1f} ms requests={r['requests']} errors={r['errors']}",
                    flush=True,
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    print("\n| clients | unbatched req/s | batched req/s | ratio | unbatched p50 / p99 ms | batched p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for clients in levels:
        u, b = results["unbatched"].get(clients), results["batched"].get(clients)
        if u is None or b is None:
            continue
        print(
            f"| {clients} | {u['rps']:.2f} | {b['rps']:.2f} | {b['rps'] / u['rps']:.2f}x "
            f"| {u['p50_ms']:.0f} / {u['p99_ms']:.0f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "model_alone": ceiling, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
