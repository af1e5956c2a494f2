"""The functions a refresh round's Ray Data tasks call, in a module that imports nothing heavy.

A Ray worker imports the module of every function and class it is sent. The round's CPU stages run in
task workers that Ray starts, and ends when idle, again and again over a run; had these functions lived
in ``engine/pipeline.py``, every such worker would import diffusers and torch first (~5 s on 2 cores),
once per worker per round. The stage objects they apply (``engine/refresh_stages.py``) are light for the
same reason: only the generation actor loads the diffusion pipeline.
"""

from __future__ import annotations

import random

import numpy as np
import ray


def apply_stage(batch: dict[str, np.ndarray], stage) -> dict[str, np.ndarray]:
    """Run a stage object on one batch (Ray Data's map_batches needs a function or a class)."""
    return stage(batch)


def on_pool(batch: dict[str, np.ndarray], actors: list) -> dict[str, np.ndarray]:
    """Run one batch on an actor of a pool. The actors hold the same model, so which one does not change
    the result; a random one spreads the calls (at most two in flight per actor, see the round's dataset)."""
    actor = actors[random.randrange(len(actors))]
    return ray.get(actor.run.remote(batch))
