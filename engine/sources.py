"""SKU records from a folder of product cutouts or a manifest, as a stream.

- a folder: every image file in it (sorted), SKU id = file stem;
- a manifest: ``.parquet``, ``.csv`` or ``.jsonl``/``.json`` (one JSON object per line) with columns
  ``sku_id``, ``image_uri`` and optional ``caption``, ``category``, ``prompt``. A relative
  ``image_uri`` is resolved against the manifest's folder.

Paths may be local or any fsspec URI. Rows are yielded one at a time: nothing holds the catalog.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow.parquet as pq

from cluster.storage import filesystem, resolve

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


class SourceError(ValueError):
    """The input as a whole cannot be read (missing, empty, wrong format); names the input."""


@dataclass
class SkuRecord:
    sku_id: str
    image_uri: str
    caption: str = ""
    category: str = ""
    prompt: str = ""
    error: str = ""
    """Set when the manifest row itself is bad (e.g. no sku_id); the row still becomes a failed result."""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _protocol_prefix(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if "://" in uri else ""


def iter_records(input_uri: str) -> Iterator[SkuRecord]:
    """Yield the SKU records of a folder or manifest.

    Raises:
        SourceError: the input does not exist or is neither a folder nor a known manifest type.
    """
    fs, path = filesystem(input_uri)
    prefix = _protocol_prefix(input_uri)
    if not fs.exists(path):
        raise SourceError(f"input not found: {input_uri}")
    if fs.isdir(path):
        for name in sorted(fs.ls(path, detail=False)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                stem = posixpath.splitext(posixpath.basename(name))[0]
                yield SkuRecord(sku_id=stem, image_uri=prefix + name if prefix else name)
        return
    suffix = posixpath.splitext(path.lower())[1]
    base = posixpath.dirname(path)
    if suffix == ".parquet":
        rows = _parquet_rows(fs, path)
    elif suffix == ".csv":
        rows = _csv_rows(fs, path)
    elif suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(fs, path, input_uri)
    else:
        raise SourceError(f"{input_uri}: not a folder and not a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    for line_no, row in enumerate(rows, start=1):
        yield record_from_row(row, base=(prefix + base) if prefix else base, where=f"{input_uri} row {line_no}")


def record_from_row(row: dict, base: str, where: str) -> SkuRecord:
    """A manifest row -> SkuRecord; a bad row becomes a record with ``error`` set, never an exception."""
    sku_id = row.get("sku_id")
    image_uri = row.get("image_uri")
    if row.get("_error"):
        return SkuRecord(sku_id=f"<unreadable row: {where}>", image_uri="", error=row["_error"])
    text = {k: "" if row.get(k) is None else str(row.get(k)) for k in ("caption", "category", "prompt")}
    if sku_id is None or str(sku_id) == "":
        return SkuRecord(
            sku_id=f"<missing sku_id: {where}>", image_uri=str(image_uri or ""), error="missing sku_id", **text
        )
    if image_uri is None or str(image_uri) == "":
        return SkuRecord(sku_id=str(sku_id), image_uri="", error="missing image_uri", **text)
    image_uri = str(image_uri)
    return SkuRecord(sku_id=str(sku_id), image_uri=resolve(base, image_uri), **text)


def _parquet_rows(fs, path: str) -> Iterator[dict]:
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
            yield from batch.to_pylist()


def _csv_rows(fs, path: str) -> Iterator[dict]:
    with fs.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def _jsonl_rows(fs, path: str, input_uri: str) -> Iterator[dict]:
    with fs.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                row = {"sku_id": None, "_error": f"line {line_no}: invalid JSON ({err.msg})"}
            yield row if isinstance(row, dict) else {"_error": f"line {line_no}: not a JSON object"}
