"""Shared test set-up: offline, CPU-only, a local Ray bound to 127.0.0.1."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub: a hub name must fail at once, not retry for 30 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    run_slow = os.environ.get("ADLOOP_RUN_SLOW") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow; set ADLOOP_RUN_SLOW=1"))


@pytest.fixture
def ray_local():
    """A local Ray with 2 CPUs on 127.0.0.1, shared by every test that asks for it.

    It stays up across tests (starting Ray costs seconds); a test that needs a different cluster
    calls ``ray.shutdown()`` first and this fixture starts a fresh one on its next use.
    """
    import ray

    from cluster.runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, num_gpus=0)
    yield ray
