"""The stages of one refresh round, as Ray-free callables over column batches.

A round works on *pending rows*: one row per SKU still without a final result, carrying what earlier
rounds learned (attempts used, best candidate so far). Each row expands into ``m`` candidates, the
next ``m`` attempts of that SKU, kept together on the row (arrays shaped ``(B, m, ...)``) so the
decision for a SKU never needs a shuffle:

    ConditionCandidates  (CPU task)   read + decode + lay out + masks + canny for each attempt
    GenerateCandidates   (actor pool) the diffusion pipeline on every candidate, product pasted back
    ScoreStage           (actor pool) engine/score.py
    DecideAndWrite       (CPU task)   first accepted attempt wins; else keep the best and go again,
                                      or finish as needs_review after max_attempts; stage files

Rows whose input is bad carry ``error`` and flow through untouched until DecideAndWrite writes their
``failed`` row.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cluster.storage import join, read_bytes, write_bytes_atomic
from engine.columns import encode_lists
from engine.commit import staged_files
from engine.conditioning import ProductImageError
from engine.config import ConditioningConfig, GeneratorConfig
from engine.outputs import (
    CANDIDATE_SCHEMA,
    RESULT_SCHEMA,
    candidate_image_rel,
    image_rel,
    part_name,
    write_parquet_atomic,
)
from engine.paths import safe_name
from engine.prepare import CONDITION_COLUMNS, MissingImageError, PromptPolicy, candidate_inputs, read_image_bytes

# Columns of a pending row (all scalars). A plan row from the input has attempts_done 0, best_p -1.
PENDING_DEFAULTS = {
    "sku_id": "",
    "image_uri": "",
    "caption": "",
    "category": "",
    "prompt": "",
    "error": "",
    "duplicates": 0,
    "ordinal": 0,
    "attempts_done": 0,
    "best_p": -1.0,
    "best_attempt": 0,
    "best_seed": 0,
    "best_prompt": "",
    "best_defect": "",
    "best_image": "",
    "gen_seconds": 0.0,
    "score_seconds": 0.0,
}
PENDING_COLUMNS = tuple(PENDING_DEFAULTS)


class ConditionCandidates:
    """Pending rows -> ``m`` conditioned candidates per row (attempts attempts_done+1 .. +m)."""

    def __init__(self, cond: ConditioningConfig, policy: PromptPolicy, m: int):
        self.cond, self.policy, self.m = cond, policy, m

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, m, s = len(batch["sku_id"]), self.m, self.cond.size
        out = {
            "product_rgba": np.zeros((b, m, s, s, 4), np.uint8),
            "image": np.zeros((b, m, s, s, 3), np.uint8),
            "inpaint_mask": np.zeros((b, m, s, s), np.uint8),
            "control": np.zeros((b, m, s, s, 3), np.uint8),
            "attempt": np.zeros((b, m), np.int32),
            "seed": np.zeros((b, m), np.int64),
        }
        # Per-candidate strings travel as one JSON list per row: Ray Data stores (B, m) string arrays
        # as fixed-width tensors that cannot be concatenated across blocks.
        prompts = [[""] * m for _ in range(b)]
        negatives = [[""] * m for _ in range(b)]
        errors = [str(e) for e in batch["error"]]
        for i in range(b):
            if errors[i]:
                continue
            try:
                self._fill(out, prompts[i], negatives[i], i, batch, i)
            except (ProductImageError, MissingImageError) as err:
                errors[i] = str(err)
        out["prompts_json"] = encode_lists(prompts)
        out["negatives_json"] = encode_lists(negatives)
        return {**batch, **out, "error": np.array(errors, dtype=object).astype(str)}

    def _fill(self, out: dict, prompts: list[str], negatives: list[str], i: int, batch: dict, row: int) -> None:
        sku, uri = str(batch["sku_id"][row]), str(batch["image_uri"][row])
        done = int(batch["attempts_done"][row])
        rows = candidate_inputs(
            sku,
            read_image_bytes(uri),
            uri,
            range(done + 1, done + self.m + 1),
            self.cond,
            self.policy,
            caption=str(batch["caption"][row]),
            prompt_override=str(batch["prompt"][row] or ""),
        )
        for j, r in enumerate(rows):
            for key in CONDITION_COLUMNS:
                out[key][i, j] = r[key]
            out["attempt"][i, j], out["seed"][i, j] = r["attempt"], r["seed"]
            prompts[j], negatives[j] = r["prompt"], r["negative_prompt"]


class GenerateCandidates:
    """The generation actor: loads the pipeline once, paints every candidate of every good row."""

    def __init__(self, cfg: GeneratorConfig, threads: int | None = None, gen_batch_size: int = 4):
        # Imported here, not above: the round's CPU tasks import this module too, and only this actor
        # needs torch and diffusers (engine/task_calls.py says what the import costs).
        from engine.generate import GenerateStage
        from engine.torch_thread import TorchThread

        self.torch = TorchThread(threads)
        self.stage = self.torch.run(GenerateStage, cfg)
        self.gen_batch_size = gen_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, m = batch["seed"].shape
        s = batch["image"].shape[2]
        generated = np.zeros((b, m, s, s, 3), np.uint8)
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        rows = np.nonzero(ok)[0]
        seconds = np.zeros(b, np.float64)
        fill = np.zeros(b, np.float64)
        if len(rows):
            flat = {
                "product_rgba": batch["product_rgba"][rows].reshape(-1, s, s, 4),
                "image": batch["image"][rows].reshape(-1, s, s, 3),
                "inpaint_mask": batch["inpaint_mask"][rows].reshape(-1, s, s),
                "control": batch["control"][rows].reshape(-1, s, s, 3),
                "prompt": np.array([p for r in rows for p in json.loads(batch["prompts_json"][r])]),
                "negative_prompt": np.array([p for r in rows for p in json.loads(batch["negatives_json"][r])]),
                "seed": batch["seed"][rows].reshape(-1),
            }
            out = self.torch.run(self.stage, flat)
            generated[rows] = out["generated"].reshape(len(rows), m, s, s, 3)
            seconds[rows] = out["gen_seconds"].reshape(len(rows), m).sum(axis=1)
            fill[:] = len(rows) * m / self.gen_batch_size
        return {**batch, "generated": generated, "gen_seconds_batch": seconds, "gen_fill": fill}


@dataclass
class WriteContext:
    out: str
    run_id: str
    round: int
    max_attempts: int
    models: dict[str, str]
    """base_model / controlnet / lora identifiers; the scorer's id and threshold come with each row."""
    staging: str
    """Where this round attempt's batch files go; the driver commits them (engine/commit.py)."""


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


class DecideAndWrite:
    """Decide each SKU of the batch and stage its files. Returns one small stats row per SKU.

    Every file goes to the round attempt's staging folder, PNGs included: a task of a failed round that
    finishes late must not overwrite the image of a SKU that another execution has committed.
    """

    def __init__(self, ctx: WriteContext):
        self.ctx = ctx

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx = self.ctx
        b, m = batch["seed"].shape
        sku_ids = [str(s) for s in batch["sku_id"]]
        part = part_name(sku_ids, f"r{ctx.round:02d}")
        files = staged_files(ctx.staging, part)
        results, candidates, pending = [], [], []
        outcome = np.full(b, "pending", dtype=object)
        final_attempts = np.zeros(b, np.int32)
        for i in range(b):
            sku = sku_ids[i]
            base = {k: _scalar(batch[k][i]) for k in PENDING_COLUMNS}
            scorer = {"rfnet": str(batch["scorer_id"][i]), "threshold": float(batch["threshold"][i])}
            if base["error"]:
                results.append(self._result(base, scorer, "failed", attempts=0))
                outcome[i] = "failed"
                continue
            base["gen_seconds"] += float(batch["gen_seconds_batch"][i])
            base["score_seconds"] += float(batch["score_seconds_batch"][i])
            name = safe_name(sku)
            prompts, negatives = json.loads(batch["prompts_json"][i]), json.loads(batch["negatives_json"][i])
            defects = json.loads(batch["defects_json"][i])
            first_ok = None
            best_data = None  # the best candidate's PNG when it is one of this batch's (not committed yet)
            for j in range(m):
                attempt = int(batch["attempt"][i, j])
                data = png_bytes(batch["generated"][i, j])
                cand_path = candidate_image_rel(name, attempt)
                write_bytes_atomic(join(files, cand_path), data)
                p = float(batch["p_available"][i, j])
                ok = bool(batch["accepted"][i, j])
                candidates.append(
                    {
                        "sku_id": sku,
                        "attempt": attempt,
                        "round": ctx.round,
                        "seed": int(batch["seed"][i, j]),
                        "prompt": prompts[j],
                        "negative_prompt": negatives[j],
                        "p_available": p,
                        "probabilities": [float(x) for x in batch["probabilities"][i, j]],
                        "defect": defects[j],
                        "accepted": ok,
                        "image_path": cand_path,
                        "run_id": ctx.run_id,
                    }
                )
                if ok and first_ok is None:
                    first_ok = (j, data)
                if p > base["best_p"]:
                    base.update(
                        best_p=p, best_attempt=attempt, best_seed=int(batch["seed"][i, j]), best_image=cand_path
                    )
                    base.update(best_prompt=prompts[j], best_defect=defects[j])
                    best_data = data
            if first_ok is not None:
                j, data = first_ok
                image_path = image_rel(name)
                write_bytes_atomic(join(files, image_path), data)
                attempt = int(batch["attempt"][i, j])
                base.update(best_p=float(batch["p_available"][i, j]), best_seed=int(batch["seed"][i, j]))
                base.update(best_prompt=prompts[j], best_defect="")
                results.append(self._result(base, scorer, "accepted", attempts=attempt, image_path=image_path))
                outcome[i], final_attempts[i] = "accepted", attempt
            elif base["attempts_done"] + m >= ctx.max_attempts:
                image_path = image_rel(name)
                # A best candidate of an earlier round was committed with that round's batch.
                if best_data is None:
                    best_data = read_bytes(join(ctx.out, base["best_image"]))
                write_bytes_atomic(join(files, image_path), best_data)
                results.append(
                    self._result(base, scorer, "needs_review", attempts=ctx.max_attempts, image_path=image_path)
                )
                outcome[i], final_attempts[i] = "needs_review", ctx.max_attempts
            else:
                base["attempts_done"] += m
                pending.append(base)
        # Staged only: the driver moves these into the output when this batch's stats reach it.
        for kind, rows, schema in (
            ("candidates", candidates, CANDIDATE_SCHEMA),
            ("results", results, RESULT_SCHEMA),
            ("pending", pending, pending_schema()),
        ):
            if rows:
                write_parquet_atomic(join(ctx.staging, kind, part), rows, schema)
        return {
            "sku_id": np.array(sku_ids, dtype=object).astype(str),
            "part": np.full(b, part, dtype=object).astype(str),
            "outcome": outcome.astype(str),
            "final_attempts": final_attempts,
            "cand_attempt": batch["attempt"],
            "cand_accepted": batch["accepted"],
            "gen_fill": batch["gen_fill"],
        }

    def _result(self, row: dict, scorer: dict, status: str, attempts: int, image_path: str = "") -> dict:
        ctx = self.ctx
        failed = status == "failed"
        return {
            "sku_id": row["sku_id"],
            "status": status,
            "image_path": image_path,
            "attempts": attempts,
            "seed": None if failed else row["best_seed"],
            "prompt": None if failed else row["best_prompt"],
            "p_available": None if failed else row["best_p"],
            "defect": None if failed or status == "accepted" else row["best_defect"],
            "error": row["error"] or None,
            "image_uri": row["image_uri"],
            "caption": row["caption"],
            "category": row["category"],
            "duplicates": row["duplicates"],
            **ctx.models,
            **scorer,
            "gen_seconds": row["gen_seconds"],
            "score_seconds": row["score_seconds"],
            "run_id": ctx.run_id,
            "finished_at": time.time(),
            "decided_by": None if failed else "rfnet",
        }


def _scalar(value):
    return value.item() if hasattr(value, "item") else value


def pending_schema():
    import pyarrow as pa

    types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    return pa.schema([(k, types[type(v)]) for k, v in PENDING_DEFAULTS.items()])
