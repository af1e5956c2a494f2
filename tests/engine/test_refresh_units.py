"""Refresh logic without Ray: pool planning, candidates per SKU, and the stages called directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from cluster.resources import ResourceConfig, ResourceError, plan_pools
from engine.commit import RoundLedger
from engine.config import ConditioningConfig, GeneratorConfig, ScorerConfig
from engine.outputs import CANDIDATE_SCHEMA, RESULT_SCHEMA, complete_parts, part_name, write_parquet_atomic
from engine.pipeline import Tally, candidates_per_sku, generator_threads, invalid_id_reason, is_system_failure
from engine.prepare import CONDITION_COLUMNS, PromptPolicy, condition_row
from engine.refresh_stages import (
    PENDING_DEFAULTS,
    ConditionCandidates,
    DecideAndWrite,
    GenerateCandidates,
    WriteContext,
    pending_schema,
)
from engine.samples import SAMPLES_DIR
from engine.score import ScoreStage
from engine.seeds import attempt_seed


def test_candidates_per_sku():
    # Enough pending SKUs to fill the pool, or nothing observed yet: one attempt each.
    assert candidates_per_sku(100, 0, 5, capacity=16, accepted=0, generated=0, target=0.9) == 1
    assert candidates_per_sku(100, 1, 5, capacity=16, accepted=10, generated=100, target=0.9) == 1
    # Few pending: enough to succeed with 90% at p = 0.5 (4 attempts), within the fill and budget.
    assert candidates_per_sku(2, 1, 5, capacity=16, accepted=50, generated=100, target=0.9) == 4
    assert candidates_per_sku(2, 3, 5, capacity=16, accepted=50, generated=100, target=0.9) == 2  # budget left
    assert candidates_per_sku(8, 1, 5, capacity=16, accepted=50, generated=100, target=0.9) == 2  # fill
    assert candidates_per_sku(2, 1, 5, capacity=16, accepted=0, generated=100, target=0.9) == 4  # p = 0
    assert candidates_per_sku(2, 1, 5, capacity=16, accepted=100, generated=100, target=0.9) == 1  # p = 1


def test_the_driver_tally_keeps_running_sums_only():
    """Its size does not grow with the SKUs or rounds it counts: every field is a number (or the three counts)."""
    tally = Tally()
    for i in range(300):
        stats = {
            "outcome": np.array(["accepted", "pending", "failed"]),
            "cand_attempt": np.array([[1, 2], [1, 2], [0, 0]]),
            "cand_accepted": np.array([[False, True], [False, False], [False, False]]),
            "gen_fill": np.array([0.5, 0.5, 0.0]) if i % 2 else np.array([1.0, 1.0, 0.0]),
        }
        assert tally.add(stats) == 2
    assert tally.counts == {"accepted": 300, "needs_review": 0, "failed": 300} and tally.pending == 300
    assert (tally.generated, tally.accepted, tally.speculative) == (1200, 300, 0)
    assert tally.mean_fill() == pytest.approx(0.75)
    for name, value in vars(tally).items():
        assert isinstance(value, int | float) or (name == "counts" and len(value) == 3), name


def test_cpu_generators_get_the_cores_they_were_given_as_torch_threads():
    # The default CPU plan: one generator per 8 CPUs, each using its share of the cluster's cores.
    assert generator_threads(plan_pools(ResourceConfig(), {"CPU": 2}), 2) == 2
    big = plan_pools(ResourceConfig(), {"CPU": 64})
    assert big.generators == 8 and generator_threads(big, 64) == 8
    assert generator_threads(plan_pools(ResourceConfig(generators=3), {"CPU": 4}), 4) == 1
    # Cores asked for explicitly are the actor's own; on GPUs Ray's setting stands.
    assert generator_threads(plan_pools(ResourceConfig(cpus_per_generator=3), {"CPU": 16}), 16) == 3
    assert generator_threads(plan_pools(ResourceConfig(), {"CPU": 8, "GPU": 1}), 8) is None


def test_pool_defaults_adapt_to_the_cluster():
    cpu = plan_pools(ResourceConfig(), {"CPU": 2})
    assert (cpu.generators, cpu.scorers, cpu.gpus_per_generator, cpu.device) == (1, 1, 0.0, "cpu")
    one_gpu = plan_pools(ResourceConfig(), {"CPU": 8, "GPU": 1})
    assert one_gpu.generators == 1 and one_gpu.gpus_per_generator + one_gpu.gpus_per_scorer <= 1
    eight = plan_pools(ResourceConfig(), {"CPU": 64, "GPU": 8})
    assert eight.generators == 7 and eight.scorers == 2 and eight.device == "cuda"
    frac = plan_pools(
        ResourceConfig(generators=3, gpus_per_generator=0.5, gpus_per_scorer=0.5, scorers=1), {"CPU": 8, "GPU": 2}
    )
    assert frac.generators == 3


def test_asking_for_more_than_the_cluster_has_fails_fast_with_both_numbers():
    with pytest.raises(ResourceError, match=r"asked for 1 GPU.*cluster has 0 GPU"):
        plan_pools(ResourceConfig(gpus_per_generator=1), {"CPU": 2})
    with pytest.raises(ResourceError, match=r"asked for .* CPU.*cluster has 2 CPU"):
        plan_pools(ResourceConfig(generators=4, cpus_per_generator=1), {"CPU": 2})
    with pytest.raises(ResourceError):
        ResourceConfig(generators=0)


def test_invalid_ids():
    assert invalid_id_reason("ok-id_1.2") == ""
    for bad in ("a/b", "../x", "a\x00b"):
        assert invalid_id_reason(bad).startswith("invalid_sku_id")


def test_stages_run_without_ray_and_the_first_accepted_attempt_wins(tmp_path):
    size, m = 32, 3
    cond = ConditioningConfig(size=size)
    policy = PromptPolicy(run_seed=0)
    paths = sorted(SAMPLES_DIR.iterdir())[:2]
    rows = [{**PENDING_DEFAULTS, "sku_id": p.stem, "image_uri": str(p)} for p in paths]
    rows.append({**PENDING_DEFAULTS, "sku_id": "missing", "image_uri": str(tmp_path / "nope.png")})
    batch = {k: np.array([r[k] for r in rows]) for k in PENDING_DEFAULTS}
    batch = ConditionCandidates(cond, policy, m)(batch)
    assert batch["product_rgba"].shape == (3, m, size, size, 4)
    assert "missing_file" in batch["error"][2] and batch["error"][0] == ""
    assert batch["seed"][0, 1] == attempt_seed(0, paths[0].stem, 2)
    batch = GenerateCandidates(GeneratorConfig(size=size, steps=2), gen_batch_size=6)(batch)
    assert not batch["generated"][2].any()  # the bad row was not generated
    batch = ScoreStage(ScorerConfig(rfnet="fixed-rate:0.5"))(batch)
    ctx = WriteContext(
        out=str(tmp_path / "out"),
        run_id="t",
        round=1,
        max_attempts=3,
        models={"base_model": "tiny", "controlnet": "c", "lora": ""},
        staging=str(tmp_path / "out" / "_state" / "t" / "r01-try1"),
    )
    stats = DecideAndWrite(ctx)(batch)
    # Staged, not committed: nothing counts as done until the driver commits the batch.
    assert not complete_parts(str(tmp_path / "out" / "results"))
    ledger = RoundLedger(ctx.out, str(tmp_path / "out" / "_state" / "t" / "pending-r01"))
    assert ledger.commit(ctx.staging, stats).all()
    assert not ledger.commit(ctx.staging, stats).any()  # a batch reported twice counts once
    ledger.close()
    results = pq.read_table(complete_parts(str(tmp_path / "out" / "results"))).to_pylist()
    by_id = {r["sku_id"]: r for r in results}
    assert by_id["missing"]["status"] == "failed" and "missing_file" in by_id["missing"]["error"]
    for i, path in enumerate(paths):
        accepted = batch["accepted"][i]
        row = by_id.get(path.stem)
        if accepted.any():
            assert row["status"] == "accepted" and row["attempts"] == int(np.argmax(accepted)) + 1
        else:
            assert row["status"] == "needs_review" and row["attempts"] == 3
            assert row["p_available"] == pytest.approx(float(batch["p_available"][i].max()))
    candidates = pq.read_table(complete_parts(str(tmp_path / "out" / "candidates"))).to_pylist()
    assert len(candidates) == 2 * m and {c["attempt"] for c in candidates} == {1, 2, 3}
    assert list(stats["outcome"]).count("failed") == 1
    assert json.loads(batch["prompts_json"][0])[0]


def test_every_caller_builds_a_candidates_inputs_the_same_way():
    """The refresh stage's m candidates of a SKU, from attempt 3 on, equal condition_row for each attempt
    (the single-row path of adloop generate and RFFT): one builder, engine.prepare.candidate_inputs."""
    size, m = 32, 4
    cond = ConditioningConfig(size=size)
    policy = PromptPolicy(run_seed=5, rotate_after=1)  # a new template every attempt, so image_scale varies
    path = sorted(SAMPLES_DIR.iterdir())[0]
    row = {**PENDING_DEFAULTS, "sku_id": path.stem, "image_uri": str(path), "caption": "a cap", "attempts_done": 2}
    batch = ConditionCandidates(cond, policy, m)({k: np.array([row[k]]) for k in PENDING_DEFAULTS})
    prompts = json.loads(batch["prompts_json"][0])
    for j in range(m):
        one = condition_row(path.stem, path.read_bytes(), str(path), 3 + j, cond, policy, caption="a cap")
        assert (batch["attempt"][0, j], batch["seed"][0, j], prompts[j]) == (
            one["attempt"],
            one["seed"],
            one["prompt"],
        )
        for key in CONDITION_COLUMNS:
            assert (batch[key][0, j] == one[key]).all(), key


def test_half_written_files_never_count(tmp_path):
    (tmp_path / "part-r01-abc.parquet.tmp-123").write_bytes(b"partial")
    (tmp_path / "part-r01-def.parquet").write_bytes(b"x")
    assert [p.rsplit("/", 1)[-1] for p in complete_parts(str(tmp_path))] == ["part-r01-def.parquet"]


def _stage_batch(staging: Path, ids: list[str], finished: list[str]) -> dict[str, np.ndarray]:
    """Files and stats of one write task that finished ``finished`` and sent the rest to the next round."""
    part = part_name(ids, "r01")
    cand = [{"sku_id": s, "attempt": 1, "round": 1, "accepted": s in finished} for s in ids]
    write_parquet_atomic(str(staging / "candidates" / part), cand, CANDIDATE_SCHEMA)
    write_parquet_atomic(str(staging / "results" / part), [{"sku_id": s, "status": "accepted"} for s in finished],
                         RESULT_SCHEMA)  # fmt: skip
    rest = [{**PENDING_DEFAULTS, "sku_id": s} for s in ids if s not in finished]
    write_parquet_atomic(str(staging / "pending" / part), rest, pending_schema())
    return {"sku_id": np.array(ids), "part": np.array([part] * len(ids))}


def test_a_failed_round_is_rerun_over_exactly_its_uncommitted_skus(tmp_path):
    out, state = tmp_path / "out", tmp_path / "out" / "_state" / "run"
    ids = [f"sku-{i}" for i in range(10)]
    source = str(state / "input" / "part-000000.parquet")
    write_parquet_atomic(source, [{**PENDING_DEFAULTS, "sku_id": s} for s in ids], pending_schema())
    try1 = state / "r01-try1"
    ledger = RoundLedger(str(out), str(state / "pending-r01"))
    committed = _stage_batch(try1, ids[:4], finished=ids[:2])
    late = _stage_batch(try1, ids[4:7], finished=ids[4:7])  # written, but its stats never reached the driver
    assert ledger.commit(str(try1), committed).tolist() == [True] * 4
    # The execution fails here. Its uncommitted batch stays staged and never reaches the output:
    assert sorted(r["sku_id"] for r in pq.read_table(complete_parts(str(out / "results"))).to_pylist()) == ids[:2]
    assert len(complete_parts(str(out / "candidates"))) == 1
    assert len(complete_parts(str(state / "pending-r01"))) == 1
    # The rerun's input is every SKU of the round not committed, once; the late batch's SKUs included.
    left = ledger.uncommitted([source], str(state / "r01-rerun1"), rows_per_file=3)
    rerun = pq.read_table(complete_parts(str(state / "r01-rerun1"))).column("sku_id").to_pylist()
    assert left == 6 and sorted(rerun) == ids[4:] and len(complete_parts(str(state / "r01-rerun1"))) == 2
    # A write task of the failed execution that finishes later is never committed: its stats come from
    # the failed execution's staging folder only, and the rerun commits from its own.
    assert (try1 / "results" / late["part"][0]).exists()
    ledger.close()


def test_only_cluster_failures_make_a_round_rerun():
    def chained(outer: Exception, inner: Exception) -> Exception:
        try:
            try:
                raise inner
            except Exception as err:
                raise outer from err
        except Exception as err:
            return err

    assert is_system_failure(ray.exceptions.ActorDiedError())
    assert is_system_failure(chained(RuntimeError("execution failed"), ray.exceptions.NodeDiedError("n")))
    assert is_system_failure(
        chained(ray.data.exceptions.SystemException(), ray.exceptions.ObjectLostError("f00d", "", ""))
    )
    assert not is_system_failure(chained(ray.data.exceptions.UserCodeException(), ValueError("a bug")))
    assert not is_system_failure(KeyError("x"))


def _decided_batches(tmp_path: Path) -> list[dict[str, np.ndarray]]:
    """Four SKUs conditioned, generated and scored once (one attempt each, every one final after it),
    split into two batches of two."""
    size = 32
    paths = sorted(SAMPLES_DIR.iterdir())[:4]
    rows = [{**PENDING_DEFAULTS, "sku_id": p.stem, "image_uri": str(p)} for p in paths]
    batch = {k: np.array([r[k] for r in rows]) for k in PENDING_DEFAULTS}
    batch = ConditionCandidates(ConditioningConfig(size=size), PromptPolicy(run_seed=0), 1)(batch)
    batch = GenerateCandidates(GeneratorConfig(size=size, steps=2), gen_batch_size=4)(batch)
    batch = ScoreStage(ScorerConfig(rfnet="fixed-rate:0.5"))(batch)
    return [{k: v[i : i + 2] for k, v in batch.items()} for i in (0, 2)]


def _output_files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and "_state" not in p.relative_to(out).parts
    }


def test_a_late_task_of_a_failed_round_changes_no_committed_file(tmp_path):
    """Round 1 commits batch A, then fails; its rerun commits batch B. Tasks of the failed execution that
    finish afterwards (A retried, B late), with other pixels, leave every committed file as it was."""
    out, state = tmp_path / "out", tmp_path / "out" / "_state" / "run"
    batch_a, batch_b = _decided_batches(tmp_path)

    def ctx(attempt: int) -> WriteContext:
        return WriteContext(out=str(out), run_id="t", round=1, max_attempts=1, models={"base_model": "tiny"},
                            staging=str(state / f"r01-try{attempt}"))  # fmt: skip

    ledger = RoundLedger(str(out), str(state / "pending-r01"))
    assert ledger.commit(ctx(1).staging, DecideAndWrite(ctx(1))(batch_a)).all()
    # The execution fails here; the rerun decides batch B in its own staging folder and commits it.
    assert ledger.commit(ctx(2).staging, DecideAndWrite(ctx(2))(batch_b)).all()
    ledger.close()
    committed = _output_files(out)
    results = pq.read_table(out / "results").to_pylist()
    assert sorted(r["sku_id"] for r in results) == sorted([*batch_a["sku_id"], *batch_b["sku_id"]])
    assert {f"images/{Path(r['image_path']).name}" for r in results} <= set(committed)
    assert sum(name.startswith("candidate_images/") for name in committed) == 4
    # Late tasks of the failed execution, whose pixels differ (other batch neighbours, other rounding).
    for late in (batch_a, batch_b):
        DecideAndWrite(ctx(1))({**late, "generated": 255 - late["generated"]})
    assert _output_files(out) == committed
    for r in results:  # each final image is still the one its row's decision chose
        cand = out / "candidate_images" / f"{Path(r['image_path']).stem}-a01.png"
        assert (out / r["image_path"]).read_bytes() == cand.read_bytes()
