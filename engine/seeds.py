"""Seeds are a pure function of (run seed, SKU id, attempt): any image can be regenerated exactly."""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch.Generator.manual_seed takes any non-negative int64


def attempt_seed(run_seed: int, sku_id: str, attempt: int) -> int:
    """The noise seed of ``attempt`` (1-based) for ``sku_id`` in a run seeded with ``run_seed``.

    A keyed hash rather than ``run_seed + attempt``: neighbouring SKUs and attempts get unrelated
    seeds, and the value does not depend on the order rows arrive in.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    digest = hashlib.blake2b(f"{run_seed}\x00{sku_id}\x00{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
