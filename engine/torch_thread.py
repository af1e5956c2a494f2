"""One thread that builds and runs a torch model for the whole life of a pool actor.

Ray Data constructs an actor's callable on one thread and calls it on another. On CPU, torch work run on
a different thread from the one that built the model ran ~1.35x slower here, with the same CPU seconds
spread over fewer busy cores (20 images of the tiny generator: 13.1 s against 9.8 s; reproduced without
Ray by building on the main thread and calling from a worker thread). Building and every call on the same
thread avoids it, whatever thread the caller is on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class TorchThread:
    def __init__(self, threads: int | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adloop-torch")
        if threads:
            import torch  # here, not at the top: the refresh's driver imports this module but runs no torch

            # Ray pins OMP_NUM_THREADS to the actor's CPU reservation; a CPU generator should use the
            # cores it was planned for.
            self.run(torch.set_num_threads, threads)

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` on this thread; exceptions propagate to the caller."""
        return self._pool.submit(fn, *args, **kwargs).result()
