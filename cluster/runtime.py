"""Starting or joining Ray the same way from every job.

With ``RAY_ADDRESS`` set (``ray job submit`` sets it) or an explicit address, the job joins that
cluster; otherwise it starts a local Ray bound to 127.0.0.1, which is the embedded default the README's
demo and the tests use.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Initialise Ray once per process (a no-op when it is already up).

    Args:
        address: a cluster to join (``"auto"``, ``"ray://..."``, ``host:port``); ``None`` uses
            ``RAY_ADDRESS`` when set, else starts a local instance.
        num_cpus: CPUs for a *local* instance (ignored when joining a cluster).
        num_gpus: GPUs for a *local* instance (ignored when joining a cluster).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray Data's own progress bars fight ours for the terminal; the jobs draw their own.
    quiet = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, **quiet)
        return
    logger.info("starting a local Ray instance on %s", LOOPBACK)
    ray.init(
        # "local" always starts a new instance: without an address ray.init() joins the most recent Ray
        # it finds on this machine (another user's, or a dead one), which is not the embedded default.
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        _node_ip_address=LOOPBACK,
        include_dashboard=False,
        **quiet,
    )
