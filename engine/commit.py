"""The driver-side commit of a refresh round, so that a round can be rerun after a failure.

A round's write tasks put each batch's files (images, candidates, results, pending rows) in the round
attempt's *staging* folder, never in the output. The driver commits a batch when its stats row
reaches it: it moves the batch's images into ``images/`` and ``candidate_images/``, its candidates file
into ``candidates/``, its results file into ``results/`` (the commit point of those SKUs) and its
pending file into the next round's input. A
SKU is committed once; a batch reported twice (a retried task) is counted once.

Why the driver and not the task: when a node dies in the middle of a round, the round's Ray Data
execution can fail while tasks of it still run elsewhere. The round is then rerun over the SKUs not
committed yet. A write task of the failed execution that finishes late writes into that execution's
staging folder, which nobody commits any more, so it can never add a second final row for a SKU the
rerun also decides. The ledger of committed SKUs is an on-disk SQLite table, so memory stays flat at
any catalog size.

A later decision on a SKU that already has its final row (a person's, in ``adloop review``) takes the
same path: ``replace_final_rows`` stages a copy of the SKU's results part with the row replaced and
moves it over the old one, so the SKU keeps exactly one final row at every moment.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from cluster.storage import filesystem, join
from engine.outputs import RESULT_SCHEMA, write_parquet_atomic

logger = logging.getLogger(__name__)

# Where a staged batch file goes when its batch is committed, in this order: results last but one,
# because a results file is what makes a SKU done for a resumed run. The batch's images (laid out as
# under OUT) go before all of them, so a committed row never names an image that is not there yet.
KINDS = ("candidates", "results", "pending")
FILES = "files"


def staged_files(staging: str, part: str) -> str:
    """The folder where a batch stages its images, at their paths relative to OUT."""
    return join(staging, FILES, part)


class RoundLedger:
    """The SKUs one round has committed so far, and the moves that commit them."""

    def __init__(self, out: str, pending_folder: str):
        self.out, self.pending_folder = out, pending_folder
        self._tmp = tempfile.TemporaryDirectory(prefix="adloop-round-")
        self._db = sqlite3.connect(os.path.join(self._tmp.name, "committed.sqlite"))
        self._db.execute("CREATE TABLE sku (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE part (staging TEXT, name TEXT, PRIMARY KEY (staging, name)) WITHOUT ROWID")

    def close(self) -> None:
        self._db.close()
        self._tmp.cleanup()

    def commit(self, staging: str, stats: dict[str, np.ndarray]) -> np.ndarray:
        """Commit the batches named in a stats batch; returns a mask of the rows seen for the first time
        (count those; the others were reported before)."""
        for name in dict.fromkeys(str(p) for p in stats["part"]):
            if self._db.execute("INSERT OR IGNORE INTO part VALUES (?, ?)", (staging, name)).rowcount:
                self._move_part(staging, name)
        fresh = np.array(
            [
                bool(self._db.execute("INSERT OR IGNORE INTO sku VALUES (?)", (str(s),)).rowcount)
                for s in stats["sku_id"]
            ],
            dtype=bool,
        )
        self._db.commit()
        return fresh

    def _move_part(self, staging: str, name: str) -> None:
        destinations = {
            "candidates": join(self.out, "candidates"),
            "results": join(self.out, "results"),
            "pending": self.pending_folder,
        }
        move_staged_tree(staged_files(staging, name), self.out)
        for kind in KINDS:
            move_staged(join(staging, kind, name), destinations[kind])

    def uncommitted(self, source_parts: list[str], dest: str, rows_per_file: int = 5000) -> int:
        """Write the rows of ``source_parts`` whose SKU is not committed as Parquet parts under ``dest``
        (the rerun's input); returns how many there are."""
        if not source_parts:
            return 0
        fs, _ = filesystem(dest)
        dataset = pads.dataset(source_parts, format="parquet", filesystem=fs)
        left, part = 0, 0
        buffer: list[pa.RecordBatch] = []
        buffered = 0
        for batch in dataset.to_batches(batch_size=rows_per_file):
            ids = batch.column("sku_id").to_pylist()
            keep = [not self._is_committed(s) for s in ids]
            kept = batch.filter(pa.array(keep))
            if kept.num_rows:
                buffer.append(kept)
                buffered += kept.num_rows
            if buffered >= rows_per_file:
                part = self._flush(buffer, dest, part, dataset.schema)
                left, buffer, buffered = left + buffered, [], 0
        if buffer:
            self._flush(buffer, dest, part, dataset.schema)
            left += buffered
        return left

    def _is_committed(self, sku: str) -> bool:
        return self._db.execute("SELECT 1 FROM sku WHERE id = ?", (sku,)).fetchone() is not None

    @staticmethod
    def _flush(batches: list[pa.RecordBatch], dest: str, part: int, schema: pa.Schema) -> int:
        rows = pa.Table.from_batches(batches, schema=schema).to_pylist()
        write_parquet_atomic(join(dest, f"part-{part:06d}.parquet"), rows, schema)
        return part + 1


def move_staged(src_uri: str, dst_folder_uri: str) -> bool:
    """Move a staged file into ``dst_folder_uri`` under its own name (a rename: it replaces a file of that
    name whole); False if there is nothing staged."""
    fs, src = filesystem(src_uri)
    if not fs.exists(src):
        return False
    _, dst_folder = filesystem(dst_folder_uri)
    fs.makedirs(dst_folder, exist_ok=True)
    fs.mv(src, f"{dst_folder.rstrip('/')}/{src.rstrip('/').rsplit('/', 1)[-1]}")
    return True


def move_staged_tree(src_folder_uri: str, dst_root_uri: str) -> int:
    """Move every file under ``src_folder_uri`` to the same relative path under ``dst_root_uri`` (each a
    rename that replaces a file of that name whole); returns how many there were."""
    fs, src = filesystem(src_folder_uri)
    if not fs.exists(src):
        return 0
    _, dst = filesystem(dst_root_uri)
    src, dst = src.rstrip("/"), dst.rstrip("/")
    moved = 0
    for path in fs.find(src):
        if ".tmp-" in path.rsplit("/", 1)[-1]:  # left by a task attempt that died while writing it
            continue
        target = f"{dst}/{path[len(src) + 1 :]}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(path, target)
        moved += 1
    return moved


def replace_final_rows(out: str, rows: dict[str, dict], part_of: dict[str, str], staging: str) -> None:
    """Replace the final rows of SKUs that are already committed, keeping one row per SKU.

    Args:
        out: the refresh output root.
        rows: SKU id -> its new final row (``RESULT_SCHEMA`` fields; missing ones are null).
        part_of: SKU id -> the file name of the ``results/`` part that holds its row.
        staging: a scratch folder of the caller's; each rewritten part is staged there, then moved.

    Raises:
        KeyError: a SKU of ``rows`` has no part in ``part_of``.
        ValueError: the part does not hold exactly one row of a SKU it should hold.
    """
    by_part: dict[str, list[str]] = {}
    for sku in rows:
        by_part.setdefault(part_of[sku], []).append(sku)
    for name, skus in by_part.items():
        fs, path = filesystem(join(out, "results", name))
        existing = pq.read_table(path, filesystem=fs)
        table = existing.to_pylist()
        ids = [r["sku_id"] for r in table]
        for sku in skus:
            if ids.count(sku) != 1:
                raise ValueError(f"results/{name} holds {ids.count(sku)} rows of SKU {sku!r}, expected 1")
        new = [{f.name: (rows.get(r["sku_id"]) or r).get(f.name) for f in RESULT_SCHEMA} for r in table]
        staged = join(staging, "results", name)
        write_parquet_atomic(staged, new, RESULT_SCHEMA)
        move_staged(staged, join(out, "results"))
        logger.info("results/%s: replaced the final rows of %d SKU(s)", name, len(skus))


def iter_stats(batches: Iterator[dict[str, np.ndarray]], ledger: RoundLedger, staging: str):
    """Commit each stats batch and yield only its rows seen for the first time."""
    for stats in batches:
        fresh = ledger.commit(staging, stats)
        if fresh.any():
            yield {k: v[fresh] for k, v in stats.items()}
