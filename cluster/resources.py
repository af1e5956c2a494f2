"""From what the cluster has to how big the engine's actor pools are.

Defaults adapt to the cluster: on GPU nodes each generator takes a GPU (scorers share a GPU between
several, RFNet being far cheaper than a diffusion run); on a CPU-only machine one generator and one
scorer share the cores with the CPU tasks. Anything asked for that the cluster cannot give fails here,
before a single task is scheduled: Ray Data waits forever for resources that never appear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ResourceError(ValueError):
    """The requested pools do not fit the cluster; the message says what was asked and what exists."""


@dataclass
class ResourceConfig:
    """Actor pools of the refresh job. ``None`` means derive from the cluster."""

    generators: int | None = None
    """Generation actors (each loads the diffusion pipeline once)."""
    scorers: int | None = None
    """Scoring actors (depth + saliency + RFNet)."""
    gpus_per_generator: float | None = None
    """GPUs per generation actor; fractions let several share one GPU. Default 1 on GPU clusters, else 0."""
    gpus_per_scorer: float | None = None
    """GPUs per scoring actor. Default 0.25 on GPU clusters (four scorers share a GPU), else 0."""
    cpus_per_generator: float | None = None
    """CPUs reserved per generation actor (default 1 with GPUs, 0.5 on CPU-only clusters)."""
    cpus_per_scorer: float | None = None
    """CPUs reserved per scoring actor (default 1 with GPUs, 0.25 on CPU-only clusters)."""
    cpus_per_task: float = 0.25
    """CPUs per conditioning / writing task; small, so they run beside the actors."""
    gen_batch_size: int | None = None
    """Images per generator call (default 8 on GPU, 4 on CPU)."""
    score_batch_size: int = 16
    """Candidates per scorer call."""

    def __post_init__(self) -> None:
        for name in ("generators", "scorers", "gen_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ResourceError(f"{name} must be >= 1, got {value}")
        for name in ("gpus_per_generator", "gpus_per_scorer", "cpus_per_generator", "cpus_per_scorer"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ResourceError(f"{name} must be >= 0, got {value}")
        if self.score_batch_size < 1 or self.cpus_per_task <= 0:
            raise ResourceError("score_batch_size must be >= 1 and cpus_per_task > 0")


@dataclass(frozen=True)
class PoolPlan:
    generators: int
    scorers: int
    gpus_per_generator: float
    gpus_per_scorer: float
    cpus_per_generator: float
    cpus_per_scorer: float
    cpus_per_task: float
    gen_batch_size: int
    score_batch_size: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_generator > 0 else "cpu"


def plan_pools(
    cfg: ResourceConfig, cluster: dict[str, float], nodes: list[dict[str, float]] | None = None
) -> PoolPlan:
    """Resolve pool sizes against ``cluster`` (``ray.cluster_resources()``).

    Args:
        cfg: the requested pools; ``None`` fields are derived from the cluster.
        cluster: total resources of the cluster (``{"CPU": ..., "GPU": ...}``).
        nodes: each node's resources (``[n["Resources"] for n in ray.nodes() if n["Alive"]]``); when given,
            every actor must also fit on one node, since an actor never spans nodes.

    Raises:
        ResourceError: the pools need more CPUs or GPUs than the cluster has, or an actor is bigger than
            every node.
    """
    total_cpus = float(cluster.get("CPU", 0))
    total_gpus = float(cluster.get("GPU", 0))
    has_gpu = total_gpus > 0
    gps = cfg.gpus_per_scorer if cfg.gpus_per_scorer is not None else (0.25 if has_gpu else 0.0)
    # On CPU-only clusters the reservations are nominal (the generator sets its torch threads itself);
    # they stay small so Ray Data's own whole-CPU tasks (file listing, reads) always find a core.
    cpg = cfg.cpus_per_generator if cfg.cpus_per_generator is not None else (1.0 if has_gpu else 0.5)
    cps = cfg.cpus_per_scorer if cfg.cpus_per_scorer is not None else (1.0 if has_gpu else 0.25)
    if has_gpu:
        scorers = cfg.scorers or max(1, math.ceil(total_gpus / 4))
        # On a single GPU the generator leaves room for the scorer; on more, each generator gets a whole one.
        gpg = cfg.gpus_per_generator if cfg.gpus_per_generator is not None else (1.0 - gps if total_gpus < 2 else 1.0)
        spare = total_gpus - scorers * gps
        generators = cfg.generators or (max(1, int(spare // gpg + 1e-9)) if gpg > 0 else 1)
    else:
        # CPU: torch already spreads one pipeline over every core; more actors would only fight over them.
        gpg = cfg.gpus_per_generator or 0.0
        generators = cfg.generators or max(1, int(total_cpus // 8))
        scorers = cfg.scorers or max(1, math.ceil(generators / 4))
    plan = PoolPlan(
        generators=generators,
        scorers=scorers,
        gpus_per_generator=gpg,
        gpus_per_scorer=gps,
        cpus_per_generator=cpg,
        cpus_per_scorer=cps,
        cpus_per_task=cfg.cpus_per_task,
        gen_batch_size=cfg.gen_batch_size or (8 if gpg > 0 else 4),
        score_batch_size=cfg.score_batch_size,
    )
    _check_fits(plan, total_cpus, total_gpus)
    if nodes is not None:
        _check_fits_a_node(plan, nodes)
    return plan


def _check_fits_a_node(plan: PoolPlan, nodes: list[dict[str, float]]) -> None:
    """Totals can fit while no single node can hold one actor (2 GPUs per actor on 1-GPU nodes): Ray would
    then wait forever for a node that never appears."""
    actors = {
        "generator": (plan.cpus_per_generator, plan.gpus_per_generator),
        "scorer": (plan.cpus_per_scorer, plan.gpus_per_scorer),
    }
    for name, (cpus, gpus) in actors.items():
        if not any(n.get("CPU", 0) + 1e-9 >= cpus and n.get("GPU", 0) + 1e-9 >= gpus for n in nodes):
            shown = ", ".join(f"({n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU)" for n in nodes)
            raise ResourceError(
                f"one {name} asks for {cpus:g} CPU and {gpus:g} GPU but no node has that much; nodes: {shown}"
            )


def _check_fits(plan: PoolPlan, total_cpus: float, total_gpus: float) -> None:
    gpus = plan.generators * plan.gpus_per_generator + plan.scorers * plan.gpus_per_scorer
    # + 1: Ray Data's internal tasks (listing and reading files) each take a whole CPU.
    cpus = plan.generators * plan.cpus_per_generator + plan.scorers * plan.cpus_per_scorer + plan.cpus_per_task + 1
    asked = (
        f"{plan.generators} generator(s) x ({plan.cpus_per_generator:g} CPU, {plan.gpus_per_generator:g} GPU) + "
        f"{plan.scorers} scorer(s) x ({plan.cpus_per_scorer:g} CPU, {plan.gpus_per_scorer:g} GPU) + "
        f"{plan.cpus_per_task:g} CPU for tasks + 1 CPU for Ray Data's reads"
    )
    if gpus > total_gpus + 1e-9:
        raise ResourceError(f"asked for {gpus:g} GPU(s) ({asked}) but the cluster has {total_gpus:g} GPU(s)")
    if cpus > total_cpus + 1e-9:
        raise ResourceError(f"asked for {cpus:g} CPU(s) ({asked}) but the cluster has {total_cpus:g} CPU(s)")
