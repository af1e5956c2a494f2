"""What a refresh leaves under its output URI, and how it is written so that a crash loses nothing.

    OUT/images/<safe id>.png          the accepted (or best) image of each SKU
    OUT/results/part-*.parquet        one final row per SKU (RESULT_SCHEMA)
    OUT/candidates/part-*.parquet     one row per generated candidate (CANDIDATE_SCHEMA)
    OUT/candidate_images/*.png        every candidate image (audits, relabelling, the review queue)
    OUT/summary.json                  counts, attempts histogram, acceptance per attempt, throughput
    OUT/duplicates/<run>.jsonl        input rows skipped because their SKU id appeared earlier
    OUT/_state/                       scratch of the current run (staged input, pending rounds)
    OUT/review/                       the human review (engine/review.py): decision log, audit sample

Every file is written under a temporary name and renamed into place, so a reader (or a resumed run)
sees a file whole or not at all. A results file is the commit point of its SKUs: a SKU is done exactly
when a results file holding its row exists. Write tasks stage every file they make (PNGs too) under
``_state/`` and the driver moves each batch's files into place when the batch's stats reach it
(engine/commit.py), so a task that is retried, or one that outlives a failed round, never adds a
second copy. Part files are named by a hash of their SKU ids and round.

``results/`` and ``candidates/`` are Parquet datasets and hold Parquet files only, so that
``pyarrow.parquet.read_table``, ``pandas.read_parquet``, DuckDB or Spark open the folder as it is;
images live in folders beside them. The ``image_path`` of a row is relative to OUT (``images/x.png``),
whatever directory the job ran in, so the output folder can be moved, copied or shared whole; resolve it
with ``output_file``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from cluster.storage import filesystem, join, resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

STATUSES = ("accepted", "needs_review", "failed")

IMAGES = "images"
CANDIDATE_IMAGES = "candidate_images"

RESULT_SCHEMA = pa.schema(
    [
        ("sku_id", pa.string()),
        ("status", pa.string()),
        ("image_path", pa.string()),
        ("attempts", pa.int32()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("p_available", pa.float32()),
        ("defect", pa.string()),
        ("error", pa.string()),
        ("image_uri", pa.string()),
        ("caption", pa.string()),
        ("category", pa.string()),
        ("duplicates", pa.int32()),
        ("base_model", pa.string()),
        ("controlnet", pa.string()),
        ("lora", pa.string()),
        ("rfnet", pa.string()),
        ("threshold", pa.float32()),
        ("gen_seconds", pa.float32()),
        ("score_seconds", pa.float32()),
        ("run_id", pa.string()),
        ("finished_at", pa.float64()),
        # Who made the call: "rfnet" (the refresh), "review" (a person, through ``adloop review``); null for failed.
        ("decided_by", pa.string()),
    ]
)

CANDIDATE_SCHEMA = pa.schema(
    [
        ("sku_id", pa.string()),
        ("attempt", pa.int32()),
        ("round", pa.int32()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("p_available", pa.float32()),
        ("probabilities", pa.list_(pa.float32())),
        ("defect", pa.string()),
        ("accepted", pa.bool_()),
        ("image_path", pa.string()),
        ("run_id", pa.string()),
    ]
)


def image_rel(sku_name: str) -> str:
    """The final image of a SKU (by its safe name), relative to OUT."""
    return f"{IMAGES}/{sku_name}.png"


def candidate_image_rel(sku_name: str, attempt: int) -> str:
    """The image of one candidate, relative to OUT."""
    return f"{CANDIDATE_IMAGES}/{sku_name}-a{attempt:02d}.png"


def output_file(out_uri: str, image_path: str) -> str:
    """Where a manifest's ``image_path`` is: relative paths are under ``out_uri``; an absolute path or a URI
    (outputs written before paths were made relative) is returned as it is."""
    return resolve(out_uri, image_path)


def part_name(sku_ids: list[str], tag: str) -> str:
    """A file name that depends only on which SKUs (and which round) it holds."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(tag.encode())
    for sku in sorted(sku_ids):
        digest.update(sku.encode("utf-8", "surrogatepass") + b"\x00")
    return f"part-{tag}-{digest.hexdigest()}.parquet"


def write_parquet_atomic(uri: str, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue())


def complete_parts(folder_uri: str) -> list[str]:
    """Readable ``part-*.parquet`` files under a folder. Leftover temporary files of a crashed writer
    are ignored (they never carry the final name), so only whole files count."""
    fs, path = filesystem(folder_uri)
    if not fs.exists(path):
        return []
    names = fs.glob(path.rstrip("/") + "/part-*.parquet")
    return sorted(n for n in names if n.endswith(".parquet"))


def iter_column_batches(
    folder_uri: str, columns: list[str], batch_size: int = 65536, schema: pa.Schema | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream some columns of a Parquet folder without loading it whole.

    With ``schema``, a column some part files lack (written before the column existed) reads as nulls.
    """
    parts = complete_parts(folder_uri)
    if not parts:
        return
    fs, _ = filesystem(folder_uri)
    dataset = pads.dataset(parts, format="parquet", filesystem=fs, schema=schema)
    yield from dataset.to_batches(columns=columns, batch_size=batch_size)


def summarise(out_uri: str, run: dict) -> dict:
    """Build summary.json from the results and candidates on disk (all runs into this output) plus
    this run's own figures in ``run``. Streams; never loads either dataset whole."""
    status = Counter()
    attempts_hist: Counter[int] = Counter()
    accepted_attempts = 0
    for batch in iter_column_batches(join(out_uri, "results"), ["status", "attempts"]):
        for s, a in zip(batch.column("status").to_pylist(), batch.column("attempts").to_pylist(), strict=True):
            status[s] += 1
            if s != "failed":
                attempts_hist[int(a)] += 1
            if s == "accepted":
                accepted_attempts += int(a)
    generated: Counter[int] = Counter()
    accepted: Counter[int] = Counter()
    for batch in iter_column_batches(join(out_uri, "candidates"), ["attempt", "accepted"]):
        for a, ok in zip(batch.column("attempt").to_pylist(), batch.column("accepted").to_pylist(), strict=True):
            generated[int(a)] += 1
            accepted[int(a)] += int(bool(ok))
    n_accepted = status["accepted"]
    summary = {
        "skus": sum(status.values()),
        "status": {s: status[s] for s in STATUSES},
        "attempts_histogram": {str(k): attempts_hist[k] for k in sorted(attempts_hist)},
        "acceptance_rate_per_attempt": {str(a): accepted[a] / generated[a] for a in sorted(generated)},
        "first_attempt_acceptance": accepted[1] / generated[1] if generated[1] else None,
        "mean_attempts_per_accepted": accepted_attempts / n_accepted if n_accepted else None,
        "candidates": sum(generated.values()),
        **run,
    }
    return summary


def write_summary(out_uri: str, summary: dict) -> None:
    write_bytes_atomic(join(out_uri, "summary.json"), json.dumps(summary, indent=2).encode())
