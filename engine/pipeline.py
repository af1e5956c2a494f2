"""The catalog refresh: distributed Recurrent Generation on Ray Data, top to bottom.

    1. read SKUs       stream the input once in the driver (constant memory): drop SKUs that already
                       have a final row (resume), log duplicate ids, stage the rest as Parquet
    2. conditions      CPU tasks: decode, lay out, masks, canny, prompt and seed per attempt
    3. generate        the generation actor pool (diffusion pipeline loaded once per actor per run)
    4. score           the scoring actor pool (depth + saliency + RFNet)
    5. decide + write  CPU tasks: the first accepted attempt wins; rejects become pending rows
    6. attempts 2..K   steps 2-5 again over the pending rows only, in rounds, until none are left

Each round's write tasks stage their files and the driver commits each batch as its stats arrive
(engine/commit.py), so a round that fails because the cluster lost a node, actor or object is rerun
over the SKUs it has not committed, without a SKU ever getting two final rows.

Rejects re-enter the generation pool as *rounds* over the pending SKUs: each round is one Ray Data
execution, and the pools are the run's own actors (``ModelPools``), started once and fed by every
round. Why not one execution with a feedback queue: a Ray Data execution plans its read tasks when it
starts, so a source the driver keeps filling needs read tasks that block on a queue (holding their
slots, and stalling everything behind them in order) until the driver knows no reject will come; and
same seed, same image needs every generator batch to hold the same rows in every run, which a batch
made of whatever rejects arrived meanwhile does not. A round ends with a barrier (its stragglers), so
the pools idle at the end of each round. When few SKUs remain pending
a round would leave the generators' batches half empty, so each pending SKU then gets ``m``
candidates at once (its next ``m`` attempts), ``m`` sized from the acceptance rate seen so far and
capped by the SKU's remaining budget. Seeds depend only on the attempt number, so the outcome is the
same as one attempt at a time: the earliest accepted attempt wins and later ones are counted as
speculative work in the summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import ray
from tqdm import tqdm

from cluster.resources import PoolPlan, plan_pools
from cluster.storage import absolute, filesystem, join
from engine.commit import RoundLedger, iter_stats
from engine.config import GeneratorConfig, RefreshConfig, ScorerConfig
from engine.model_paths import checked_paths, describe
from engine.outputs import complete_parts, iter_column_batches, summarise, write_parquet_atomic, write_summary
from engine.pool_actors import GenerateCandidatesActor, ScoreStageActor
from engine.prepare import PromptPolicy
from engine.prompts import load_prompt_config
from engine.refresh_stages import (
    PENDING_DEFAULTS,
    ConditionCandidates,
    DecideAndWrite,
    WriteContext,
    pending_schema,
)
from engine.report import write_report
from engine.sources import SourceError, iter_records
from engine.task_calls import apply_stage, on_pool

logger = logging.getLogger(__name__)

UNSAFE_ID_PARTS = ("/", "..", "\x00")


def candidates_per_sku(
    pending: int, attempts_done: int, max_attempts: int, capacity: int, accepted: int, generated: int, target: float
) -> int:
    """How many attempts each pending SKU gets in the next round (see module doc)."""
    budget = max_attempts - attempts_done
    if generated == 0 or pending >= capacity:
        return 1
    rate = accepted / generated
    if rate >= 1.0:
        needed = 1
    elif rate <= 0.0:
        needed = budget
    else:
        needed = math.ceil(math.log(1.0 - target) / math.log(1.0 - rate))
    fill = math.ceil(capacity / pending)
    return max(1, min(budget, needed, fill))


def generator_threads(plan: PoolPlan, cluster_cpus: float) -> int | None:
    """Torch threads of one CPU generation actor: the cores that actor was given (None on GPUs, where
    Ray's setting stands).

    An explicit ``cpus_per_generator`` of a core or more is the actor's own. The default CPU plan reserves
    only a share of a core per generator, so that tasks fit beside it, and plans one generator per 8 CPUs:
    there each generator's cores are the cluster's divided over the pool. Giving every generator the
    whole cluster's count would run generators x cluster-CPUs threads on the cluster's cores.
    """
    if plan.gpus_per_generator > 0:
        return None
    if plan.cpus_per_generator >= 1:
        return int(plan.cpus_per_generator)
    return max(1, int(cluster_cpus // plan.generators))


@dataclass
class Tally:
    """This run's figures, from the stats rows of committed batches (each SKU's row counted once)."""

    counts: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "needs_review": 0, "failed": 0})
    generated: int = 0
    accepted: int = 0
    speculative: int = 0
    """Candidates generated after the one that was accepted (the price of several per SKU per round)."""
    pending: int = 0
    """SKUs the current round sends to the next."""
    fill_sum: float = 0.0
    fill_rows: int = 0
    """Generator batch fill summed over the rows that were generated, and their count: running sums, so
    the driver's memory does not grow with the catalog."""
    round_reruns: int = 0
    """Rounds rerun after their execution failed for a cluster reason."""

    def add(self, stats: dict[str, np.ndarray]) -> int:
        """Count a batch of stats rows; returns how many SKUs they finished."""
        finished = 0
        for outcome, attempts_row, accepted_row in zip(
            stats["outcome"], stats["cand_attempt"], stats["cand_accepted"], strict=True
        ):
            if outcome == "pending":
                self.pending += 1
            else:
                self.counts[outcome] += 1
                finished += 1
            if outcome == "failed":
                continue
            self.generated += len(attempts_row)
            self.accepted += int(accepted_row.sum())
            if outcome == "accepted":
                self.speculative += len(attempts_row) - int(np.argmax(accepted_row)) - 1
        fills = stats["gen_fill"][stats["gen_fill"] > 0]
        self.fill_sum += float(fills.sum())
        self.fill_rows += len(fills)
        return finished

    def mean_fill(self) -> float | None:
        return self.fill_sum / self.fill_rows if self.fill_rows else None


class ModelPools:
    """The run's generation and scoring actors: started once, before the input is staged, and used by
    every round and every rerun of a round, so each loads its model (and warms up) once per run.

    Ray Data starts an operator's actor pool with each execution and ends it with the execution, and an
    execution is one round: pools of its own made every retry round pay the start-up again (a model load
    per actor; ~33 s per round on 2 CPUs with the tiny models). Like those, these actors restart when they
    die and their calls are retried, so a lost node or a killed actor costs a model load, not the round.
    """

    def __init__(self, cfg: RefreshConfig, plan: PoolPlan, threads: int | None):
        generator = ray.remote(GenerateCandidatesActor).options(
            num_cpus=plan.cpus_per_generator, num_gpus=plan.gpus_per_generator, max_restarts=-1, max_task_retries=-1
        )
        gen_cfg = _on_device(cfg.generator, plan.gpus_per_generator)
        self.generators = [
            generator.remote(cfg=gen_cfg, threads=threads, gen_batch_size=plan.gen_batch_size)
            for _ in range(plan.generators)
        ]
        scorer = ray.remote(ScoreStageActor).options(
            num_cpus=plan.cpus_per_scorer, num_gpus=plan.gpus_per_scorer, max_restarts=-1, max_task_retries=-1
        )
        score_cfg = _scorer_on_device(cfg.scorer, plan.gpus_per_scorer)
        self.scorers = [scorer.remote(score_cfg) for _ in range(plan.scorers)]

    def close(self) -> None:
        for actor in self.generators + self.scorers:
            ray.kill(actor)


def run_refresh(cfg: RefreshConfig) -> dict:
    """Run the refresh on the current Ray cluster (call ``cluster.runtime.init_ray`` first).

    Raises:
        ModelPathError: a model path is wrong (checked before any work starts).
    """
    start = time.time()
    # A wrong model path would otherwise surface as every pool actor dying at start-up, which looks like
    # a cluster failure and would be retried.
    cfg = dataclasses.replace(
        cfg, output=absolute(cfg.output), generator=checked_paths(cfg.generator), scorer=cfg.scorer.checked()
    )
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    plan = plan_pools(cfg.resources, ray.cluster_resources(), nodes)
    templates = load_prompt_config(cfg.prompts)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    state = join(cfg.output, "_state", run_id)
    context = ray.data.DataContext.get_current()
    # Our own bar reports SKUs; ADLOOP_RAY_PROGRESS=1 brings back Ray Data's per-operator bars for debugging.
    context.enable_progress_bars = os.environ.get("ADLOOP_RAY_PROGRESS") == "1"
    context.print_on_execution_start = False
    # Batched float math differs in the last bits with a row's batch neighbours, so "same seed, same image"
    # needs every batch to hold the same rows in every run. Ray Data bundles blocks into batches in the
    # order they arrive; in order, a round's short last block can only ever end the last batch.
    context.execution_options.preserve_order = True
    # Each round reads its staged input with read_parquet. Through Ray Data's DataSourceV2 path (Ray 2.60's
    # default) that execution starts with a ListFiles task that took 2.5-4 s of wall time here (0.1 s of CPU)
    # even for one small local file; the classic path reads the same file in 0.25 s. Measured in
    # docs/benchmarks.md ("the cost of a retry round"): it was most of what a round cost.
    context.use_datasource_v2 = False
    logger.info("pools: %s", plan)

    threads = generator_threads(plan, ray.cluster_resources().get("CPU", 1))
    # Started first, so that the models load while the input is staged.
    pools = ModelPools(cfg, plan, threads)
    try:
        return _run_rounds(cfg, plan, pools, templates, run_id, state, start)
    finally:
        pools.close()


def _run_rounds(cfg: RefreshConfig, plan: PoolPlan, pools: ModelPools, templates, run_id: str, state: str,
                start: float) -> dict:  # fmt: skip
    # 1. read SKUs
    staged = stage_input(cfg, join(state, "input"), run_id)
    if staged["input_rows"] == 0:
        raise SourceError(f"input {cfg.input} contains no SKUs")
    models = describe(cfg.generator)
    policy = PromptPolicy(
        templates=templates, run_seed=cfg.run_seed, rotate_after=cfg.rotate_after, mix_caption=cfg.mix_caption
    )
    tally = Tally()
    source, pending, attempts_done, rounds = join(state, "input"), staged["to_process"], 0, 0
    bar = tqdm(total=staged["to_process"], desc="refresh", unit="sku", disable=not cfg.progress, file=sys.stderr)
    while pending > 0:
        rounds += 1
        capacity = plan.generators * plan.gen_batch_size * 2
        m = candidates_per_sku(
            pending, attempts_done, cfg.max_attempts, capacity, tally.accepted, tally.generated, cfg.success_target
        )
        next_source = join(state, f"pending-r{rounds:02d}")
        ledger = RoundLedger(cfg.output, next_source)
        round_input, tries, tally.pending = complete_parts(source), 0, 0
        try:
            # A round failing for a system reason (lost node, actor, object) is rerun over its uncommitted SKUs.
            while round_input:
                tries += 1
                ctx = WriteContext(
                    out=cfg.output, run_id=run_id, round=rounds, max_attempts=cfg.max_attempts, models=models,
                    staging=join(state, f"r{rounds:02d}-try{tries}"),
                )  # fmt: skip
                ds = _round_dataset(cfg, plan, policy, pools, round_input, m, ctx)
                try:
                    for stats in iter_stats(
                        ds.iter_batches(batch_size=None, batch_format="numpy"), ledger, ctx.staging
                    ):
                        bar.update(tally.add(stats))
                        bar.set_postfix(round=rounds, m=m, **tally.counts, pending=bar.total - bar.n)
                    round_input = []
                except Exception as err:
                    if tries > cfg.round_retries or not is_system_failure(err):
                        raise
                    tally.round_reruns += 1
                    rerun = join(state, f"r{rounds:02d}-rerun{tries}")
                    left = ledger.uncommitted(round_input, rerun, cfg.stage_rows_per_file)
                    logger.warning(
                        "round %d failed (%s: %s); rerunning it for its %d SKUs not committed yet (rerun %d of %d)",
                        rounds, type(err).__name__, err, left, tries, cfg.round_retries,
                    )  # fmt: skip
                    round_input = complete_parts(rerun) if left else []
        finally:
            ledger.close()
        attempts_done += m
        pending, source = tally.pending, next_source
        bar.set_postfix(round=rounds, **tally.counts, pending=pending)
    bar.close()
    _remove(state)
    _remove_if_empty(join(cfg.output, "_state"))  # another run's state (a killed one's) stays
    wall = time.time() - start
    run = {
        "run_id": run_id,
        "wall_seconds": wall,
        "this_run": {
            "skus_processed": staged["to_process"],
            "skipped_already_done": staged["skipped_done"],
            "duplicate_ids": staged["duplicates"],
            "rounds": rounds,
            "candidates_generated": tally.generated,
            "speculative_candidates": tally.speculative,
            "round_reruns": tally.round_reruns,
            "images_per_second": tally.generated / wall if wall > 0 else 0.0,
            "mean_generation_batch_fill": tally.mean_fill(),
            **tally.counts,
        },
        "models": {**models, "rfnet": cfg.scorer.rfnet},
        "pools": dataclasses.asdict(plan),
    }
    summary = summarise(cfg.output, run)
    write_summary(cfg.output, summary)
    # The run's data is committed by now: a report that cannot be built costs a warning, not the run.
    try:
        write_report(cfg.output)
    except Exception:
        logger.exception("could not write the run report; rebuild it with `adloop report %s`", cfg.output)
    return summary


def _round_dataset(cfg: RefreshConfig, plan, policy: PromptPolicy, pools: ModelPools, parts: list[str], m: int, ctx):
    """Steps 2-5 of one round over the pending rows in ``parts``, as a lazy Ray Data dataset of stats rows."""
    rows_per_gen = max(1, plan.gen_batch_size // m)
    # Every task asks for a small CPU share: the actors hold most of the cores, and a task asking for
    # a whole CPU could wait forever beside them.
    ds = ray.data.read_parquet(
        parts, filesystem=filesystem(cfg.output)[0], ray_remote_args={"num_cpus": plan.cpus_per_task}
    )
    # One block per generator batch. A staged file is read as one block, and a map over one block is one
    # task whose output is one block: without this the whole file would be conditioned, then generated,
    # then scored, then written, one stage after the other, with nothing committed until the end.
    # ``strict`` makes every block the same consecutive rows (with preserve_order, see run_refresh).
    ds = ds.repartition(target_num_rows_per_block=rows_per_gen, strict=True)
    # 2. conditions (CPU tasks)
    ds = ds.map_batches(
        apply_stage,
        fn_kwargs={"stage": ConditionCandidates(cfg.conditioning, policy, m)},
        batch_size=rows_per_gen,
        num_cpus=plan.cpus_per_task,
    )
    # 3. generate and 4. score, each batch whole on an actor of the run's pools. Two calls in flight per
    # actor keep it busy while the next batch travels, without queueing a round's worth of batches on it.
    for actors, batch_rows in ((pools.generators, rows_per_gen), (pools.scorers, max(1, plan.score_batch_size // m))):
        ds = ds.map_batches(
            on_pool,
            fn_kwargs={"actors": actors},
            batch_size=batch_rows,
            num_cpus=plan.cpus_per_task,
            compute=ray.data.TaskPoolStrategy(size=2 * len(actors)),
        )
    # 5. decide + write (into the round attempt's staging folder; the driver commits)
    return ds.map_batches(
        apply_stage, fn_kwargs={"stage": DecideAndWrite(ctx)}, batch_size=rows_per_gen, num_cpus=plan.cpus_per_task
    )


# Failures of the cluster rather than of the job's code: a rerun of the round can get past them.
SYSTEM_FAILURES = (
    ray.exceptions.RayActorError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.RaySystemError,
    ray.exceptions.OutOfMemoryError,
    ray.data.exceptions.SystemException,
)


def is_system_failure(err: BaseException) -> bool:
    """Whether ``err``, or anything it was raised from, is a lost node, actor, worker or object."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, SYSTEM_FAILURES):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return False


def _on_device(gen: GeneratorConfig, gpus: float) -> GeneratorConfig:
    if gen.device != "auto":
        return gen
    return GeneratorConfig(**{**vars(gen), "device": "cuda" if gpus > 0 else "cpu"})


def _scorer_on_device(sc: ScorerConfig, gpus: float) -> ScorerConfig:
    if sc.device != "auto":
        return sc
    return ScorerConfig(**{**vars(sc), "device": "cuda" if gpus > 0 else "cpu"})


def _remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _remove_if_empty(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.isdir(path) and not fs.ls(path):
        fs.rm(path, recursive=True)


def invalid_id_reason(sku_id: str) -> str:
    bad = [part for part in UNSAFE_ID_PARTS if part in sku_id]
    if not bad:
        return ""
    shown = ", ".join(repr(b) for b in bad)
    return f"invalid_sku_id: the id contains {shown}"


def stage_input(cfg: RefreshConfig, staged_uri: str, run_id: str) -> dict[str, int]:
    """Step 1: stream the input once; write the SKUs to process as Parquet files of pending rows.

    Memory stays flat: ids are checked against an on-disk SQLite index (SKUs already done in this
    output, ids already seen in this input), and rows are flushed every ``stage_rows_per_file``.
    """
    counts = {"input_rows": 0, "to_process": 0, "skipped_done": 0, "duplicates": 0}
    with tempfile.TemporaryDirectory(prefix="adloop-stage-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "ids.sqlite"))
        db.execute("CREATE TABLE done (id TEXT PRIMARY KEY) WITHOUT ROWID")
        db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY) WITHOUT ROWID")
        for batch in iter_column_batches(join(cfg.output, "results"), ["sku_id"]):
            db.executemany("INSERT OR IGNORE INTO done VALUES (?)", ((s,) for s in batch.column("sku_id").to_pylist()))
        buffer: list[dict] = []
        dup_log = None
        part = 0
        for ordinal, record in enumerate(iter_records(cfg.input)):
            counts["input_rows"] += 1
            if db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (record.sku_id,)).rowcount == 0:
                counts["duplicates"] += 1
                if dup_log is None:
                    dup_log = _open_duplicates_log(cfg.output, run_id)
                dup_log.write(
                    json.dumps({"sku_id": record.sku_id, "ordinal": ordinal, "image_uri": record.image_uri}) + "\n"
                )
                if counts["duplicates"] <= 10:
                    logger.warning(
                        "duplicate SKU id %r at input row %d: only its first occurrence is processed",
                        record.sku_id,
                        ordinal,
                    )
                continue
            if db.execute("SELECT 1 FROM done WHERE id = ?", (record.sku_id,)).fetchone():
                counts["skipped_done"] += 1
                continue
            row = {**PENDING_DEFAULTS, **record.to_dict(), "ordinal": ordinal}
            row["error"] = row["error"] or invalid_id_reason(record.sku_id)
            buffer.append(row)
            counts["to_process"] += 1
            if len(buffer) >= cfg.stage_rows_per_file:
                write_parquet_atomic(join(staged_uri, f"part-{part:06d}.parquet"), buffer, pending_schema())
                buffer, part = [], part + 1
        if buffer:
            write_parquet_atomic(join(staged_uri, f"part-{part:06d}.parquet"), buffer, pending_schema())
        if dup_log is not None:
            dup_log.close()
        db.close()
    return counts


def _open_duplicates_log(out: str, run_id: str):
    """One JSON line per skipped duplicate, in ``OUT/duplicates/<run id>.jsonl``."""
    fs, path = filesystem(join(out, "duplicates", f"{run_id}.jsonl"))
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    return fs.open(path, "w")
