"""RFNet datasets: the RF1M folder layout and Parquet/JSONL manifests, validation, product-level splits.

Two on-disk forms hold the same fields (generated image, product cutout, caption, label, optional depth
and saliency maps):

- **RF1M layout**: a folder with ``generated/``, ``product/`` (RGBA, same file names), optional ``depth/``
  and ``saliency/``, a ``label.txt`` (``<file name><TAB><label>`` per line; the label is a name from
  ``LABELS`` or its index; a single space also separates when the line has no tab) and a ``caption.txt``
  in the same format. This is what ``adloop synth rf1m`` writes.
- **Manifest**: a ``.parquet`` or ``.jsonl`` file with columns ``generated``, ``product``, ``caption``,
  ``label`` and optionally ``product_id``, ``depth``, ``saliency``, ``id``. Relative paths are relative
  to the manifest's folder; fsspec URIs work.

The product id (what splits group by) is the ``product_id`` column, else the file stem up to its last
``_`` (``p00012_03.png`` -> ``p00012``), else the whole stem. Bad entries (unknown labels, missing files
or captions, unreadable images) are collected and raised together in one ``DatasetError`` that names each
file; nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from cluster.storage import filesystem, join, resolve
from rfnet.config import LABELS

_LABEL_INDEX = {name.lower().replace("_", " ").replace("-", " "): i for i, name in enumerate(LABELS)}


DECODED_MODES = {"generated": "RGB", "product": "RGBA", "depth": "L", "saliency": "L"}
"""PIL mode of each decoded image field; one uint8 channel per letter."""


class DatasetError(ValueError):
    """One or more dataset entries are unusable; ``problems`` lists each with its file named."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        super().__init__(f"{source}: {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'}:\n  {shown}")


@dataclass
class Example:
    """One labelled sample; image fields are paths or URIs."""

    id: str
    product_id: str
    generated: str
    product: str
    caption: str
    label: int
    depth: str | None = None
    saliency: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_label(value: object) -> int:
    """A label name (case-insensitive; ``_``/``-`` for spaces) or index -> index into ``LABELS``.

    Raises:
        ValueError: not a known label.
    """
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        if 0 <= i < len(LABELS):
            return i
        raise ValueError(f"label index {i} out of range 0..{len(LABELS) - 1}")
    key = str(value).strip().lower().replace("_", " ").replace("-", " ")
    if key not in _LABEL_INDEX:
        raise ValueError(f"unknown label {value!r}; expected one of {list(LABELS)}")
    return _LABEL_INDEX[key]


def product_id_of(name: str) -> str:
    stem = os.path.splitext(os.path.basename(name))[0]
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def _read_table(uri: str) -> list[tuple[int, str, str]]:
    """Lines of a ``name<TAB>value`` file as (line number, name, value)."""
    fs, path = filesystem(uri)
    rows = []
    with fs.open(path, "r") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, sep, value = line.partition("\t") if "\t" in line else line.partition(" ")
            rows.append((n, name.strip(), value.strip() if sep else ""))
    return rows


def read_rf1m(root: str) -> list[Example]:
    """Read an RF1M-layout folder.

    Raises:
        FileNotFoundError: no ``label.txt``.
        DatasetError: unknown labels, missing captions or missing image files (all of them, named).
    """
    fs, root_path = filesystem(root)
    label_file = join(root, "label.txt")
    if not fs.exists(join(root_path, "label.txt")):
        raise FileNotFoundError(f"{root}: not an RF1M folder (no label.txt)")
    captions: dict[str, str] = {}
    if fs.exists(join(root_path, "caption.txt")):
        captions = {name: value for _, name, value in _read_table(join(root, "caption.txt"))}
    listing = {sub: set() for sub in ("generated", "product", "depth", "saliency")}
    for sub in listing:
        if fs.isdir(join(root_path, sub)):
            listing[sub] = {os.path.basename(p) for p in fs.ls(join(root_path, sub), detail=False)}
    problems, examples = [], []
    for n, name, value in _read_table(label_file):
        where = f"label.txt:{n} ({name})"
        try:
            label = parse_label(value)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        missing = [sub for sub in ("generated", "product") if name not in listing[sub]]
        if missing:
            problems.append(f"{where}: missing file(s) {', '.join(f'{s}/{name}' for s in missing)}")
            continue
        if name not in captions:
            problems.append(f"{where}: no caption in caption.txt")
            continue
        examples.append(
            Example(
                id=os.path.splitext(name)[0],
                product_id=product_id_of(name),
                generated=join(root, "generated", name),
                product=join(root, "product", name),
                caption=captions[name],
                label=label,
                depth=join(root, "depth", name) if name in listing["depth"] else None,
                saliency=join(root, "saliency", name) if name in listing["saliency"] else None,
            )
        )
    if problems:
        raise DatasetError(root, problems)
    return examples


def read_manifest(uri: str) -> list[Example]:
    """Read a ``.parquet`` or ``.jsonl`` manifest.

    Raises:
        DatasetError: missing columns/values or unknown labels, each with its row and file named.
    """
    fs, path = filesystem(uri)
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            rows = pq.read_table(f).to_pylist()
    elif path.endswith(".jsonl"):
        with fs.open(path, "r") as f:
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DatasetError(uri, [f"line {n}: not JSON ({e})"]) from None
    else:
        raise ValueError(f"{uri}: a manifest must end in .parquet or .jsonl")

    def located(p: str | None) -> str | None:
        if not p:
            return None
        return resolve(base, p)

    problems, examples = [], []
    for n, row in enumerate(rows, 1):
        where = f"row {n} ({row.get('generated', '?')})"
        absent = [k for k in ("generated", "product", "caption", "label") if row.get(k) in (None, "")]
        if absent:
            problems.append(f"{where}: missing {', '.join(absent)}")
            continue
        try:
            label = parse_label(row["label"])
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        gen = located(row["generated"])
        examples.append(
            Example(
                id=str(row.get("id") or os.path.splitext(os.path.basename(gen))[0]),
                product_id=str(row.get("product_id") or product_id_of(gen)),
                generated=gen,
                product=located(row["product"]),
                caption=str(row["caption"]),
                label=label,
                depth=located(row.get("depth")),
                saliency=located(row.get("saliency")),
            )
        )
    if problems:
        raise DatasetError(uri, problems)
    return examples


def read_dataset(uri: str) -> list[Example]:
    """An RF1M folder or a manifest file, by what ``uri`` is."""
    if uri.endswith((".parquet", ".jsonl")):
        return read_manifest(uri)
    return read_rf1m(uri)


def read_datasets(uris: str | list[str]) -> list[Example]:
    """One or several datasets (RF1M folders or manifests), merged in order.

    Raises:
        DatasetError: every bad entry of every dataset, each named.
    """
    examples, problems = [], []
    for uri in [uris] if isinstance(uris, str) else uris:
        try:
            examples += read_dataset(uri)
        except DatasetError as e:
            problems += [f"{uri}: {p}" for p in e.problems]
    if problems:
        raise DatasetError("datasets", problems)
    return examples


def split_by_product(
    examples: list[Example], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[Example]]:
    """Split into ``train``/``val``/``test`` by product id, never by image (docs/paper.md §8, Q5).

    A product's split is a hash of (seed, product id), so it is stable when the dataset grows.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for ex in examples:
        digest = hashlib.sha256(f"{seed}/{ex.product_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(ex)
    return out


def write_shards(examples: list[Example], folder: str, rows_per_shard: int, seed: int | None = None) -> list[str]:
    """Write ``examples`` as Parquet shards (one row per example: its paths, caption and label), which a
    training run streams and decodes every epoch instead of holding decoded images.

    Args:
        examples: the rows.
        folder: destination (created; shards already there are replaced).
        rows_per_shard: rows per file; the unit a reader shuffles when it shuffles files.
        seed: with a seed the rows are written in that seed's random order (an RF1M ``label.txt`` lists a
            product's images together, and a stream read in that order would fill batches with one
            product); ``None`` keeps the order given.

    Returns:
        The shard paths, in order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):
        if old.startswith("shard-") and old.endswith(".parquet"):
            os.remove(os.path.join(folder, old))
    order = np.random.default_rng(seed).permutation(len(examples)) if seed is not None else range(len(examples))
    rows = [examples[i].to_dict() for i in order]
    schema = pa.schema(
        [(name, pa.int64() if name == "label" else pa.string()) for name in Example.__dataclass_fields__]
    )
    paths = []
    for start in range(0, len(rows), rows_per_shard):
        path = os.path.join(folder, f"shard-{start // rows_per_shard:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows[start : start + rows_per_shard], schema=schema), path)
        paths.append(path)
    return paths


def _decode(uri: str, mode: str, size: int) -> np.ndarray:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def decode_examples(rows: list[dict], size: int) -> dict[str, np.ndarray]:
    """Decode a batch of ``Example`` dicts into uint8 arrays at ``size`` px.

    Returns:
        ``generated`` (B, S, S, 3), ``product`` (B, S, S, 4), ``depth``/``saliency`` (B, S, S) when every
        row has them, ``label`` (B,) int64, ``caption`` (B,) object, ``id`` (B,) object.

    Raises:
        DatasetError: every unreadable image file, named.
    """
    problems: list[str] = []
    out: dict[str, list] = {"generated": [], "product": [], "depth": [], "saliency": []}
    has_maps = {k: all(r.get(k) for r in rows) for k in ("depth", "saliency")}
    for r in rows:
        for key, mode in DECODED_MODES.items():
            if key in has_maps and not has_maps[key]:
                continue
            try:
                out[key].append(_decode(r[key], mode, size))
            except Exception as e:  # PIL raises several types for corrupt files; all mean "unreadable"
                problems.append(f"{r[key]}: unreadable image ({type(e).__name__}: {e})")
                out[key].append(np.zeros((size, size, len(mode)) if len(mode) > 1 else (size, size), np.uint8))
    if problems:
        raise DatasetError("images", problems)
    batch = {k: np.stack(v) for k, v in out.items() if v}
    batch["label"] = np.array([r["label"] for r in rows], np.int64)
    batch["caption"] = np.array([r["caption"] for r in rows], dtype=object)
    batch["id"] = np.array([r["id"] for r in rows], dtype=object)
    return batch


def check_readable(examples: list[Example], size: int = 32) -> None:
    """Decode every image of ``examples`` once; raise one ``DatasetError`` naming all unreadable files."""
    problems: list[str] = []
    for i in range(0, len(examples), 256):
        try:
            decode_examples([e.to_dict() for e in examples[i : i + 256]], size)
        except DatasetError as e:
            problems += e.problems
    if problems:
        raise DatasetError("images", problems)
