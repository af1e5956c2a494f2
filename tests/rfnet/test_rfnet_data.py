"""Datasets: the synthetic generator, the RF1M and manifest readers, bad-entry reports, splits, metrics."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from rfnet.config import LABELS
from rfnet.data import (
    DatasetError,
    check_readable,
    decode_examples,
    parse_label,
    read_dataset,
    split_by_product,
    write_shards,
)
from rfnet.metrics import average_precision, calibrate_threshold, confusion_matrix, evaluate
from rfnet.synth import generate_rf1m, make_product
from rfnet.text import tiny_tokenizer


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth") / "rf1m")
    generate_rf1m(out, 48, seed=3, size=32)
    return out


def test_synth_layout_labels_and_determinism(synth, tmp_path):
    for sub in ("generated", "product", "depth", "saliency"):
        assert len(os.listdir(os.path.join(synth, sub))) == 48
    examples = read_dataset(synth)
    assert len(examples) == 48
    assert {e.product_id for e in examples} == {f"p{i:05d}" for i in range(12)}
    batch = decode_examples([e.to_dict() for e in examples], 32)
    assert batch["generated"].shape == (48, 32, 32, 3) and batch["product"].shape == (48, 32, 32, 4)
    assert batch["depth"].shape == (48, 32, 32) and batch["generated"].dtype == np.uint8
    # same seed, same bytes; another seed, other images
    again = str(tmp_path / "again")
    generate_rf1m(again, 48, seed=3, size=32)
    name = "p00004_01.png"
    for sub in ("generated", "product", "depth", "saliency"):
        with open(os.path.join(synth, sub, name), "rb") as a, open(os.path.join(again, sub, name), "rb") as b:
            assert a.read() == b.read()
    other = str(tmp_path / "other")
    generate_rf1m(other, 8, seed=4, size=32)
    assert read_dataset(other)[0].caption != examples[0].caption or not np.array_equal(
        decode_examples([read_dataset(other)[0].to_dict()], 32)["generated"], batch["generated"][:1]
    )


def test_synth_product_is_pasted_unchanged_and_unsuitable_is_per_product(tmp_path):
    out = str(tmp_path / "d")
    counts = generate_rf1m(out, 400, seed=0, size=32)
    assert all(counts[label] > 0 for label in LABELS), counts
    examples = read_dataset(out)
    by_product: dict[str, set] = {}
    for e in examples:
        by_product.setdefault(e.product_id, set()).add(e.label)
    for labels in by_product.values():  # a bad cutout makes every image of the product Unsuitable
        assert labels == {1} or 1 not in labels
    # product pixels (fully opaque in the cutout) are the product's pixels in the ad image
    batch = decode_examples([e.to_dict() for e in examples[:20]], 32)
    opaque = batch["product"][..., 3] == 255
    diff = np.abs(batch["product"][..., :3].astype(int) - batch["generated"].astype(int))[opaque]
    assert np.median(diff) <= 2


def test_synth_captions_are_in_the_tiny_vocabulary():
    tok = tiny_tokenizer()
    for pid in range(60):
        ids = tok(make_product(pid, 0, 32).caption)["input_ids"]
        assert tok.unk_token_id not in ids


def test_size_mismatch_scenes_are_ambiguous_without_the_caption():
    """Every scene scale a mismatch uses is also the matching scale of another size class."""
    from rfnet.synth import MISMATCH_SCENE, SIZE_CLASSES, TILE_PERIOD, WINDOW_HEIGHT

    mismatch_scenes = set()
    for size in SIZE_CLASSES:
        assert size not in MISMATCH_SCENE[size]
        mismatch_scenes.update(MISMATCH_SCENE[size])
    assert mismatch_scenes <= set(SIZE_CLASSES) and len(mismatch_scenes) == 2
    # scales of different classes do not overlap even at the ends of their +-15% jitter
    for table in (TILE_PERIOD, WINDOW_HEIGHT):
        ordered = sorted(table.values())
        assert all(lo * 1.15 < hi * 0.87 for lo, hi in zip(ordered[:-1], ordered[1:], strict=True))


def test_unknown_labels_and_missing_files_are_all_reported_by_name(synth, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(synth, bad)
    lines = open(os.path.join(bad, "label.txt")).read().splitlines()
    name0, name1, name2 = (line.split("\t")[0] for line in lines[:3])
    lines[0] = f"{name0}\tFloating Product"
    os.remove(os.path.join(bad, "product", name1))
    lines.append("p99999_00.png\tAvailable")
    with open(os.path.join(bad, "label.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        read_dataset(bad)
    problems = info.value.problems
    assert len(problems) == 3
    assert any(name0 in p and "Floating Product" in p for p in problems)
    assert any(name1 in p and f"product/{name1}" in p for p in problems)
    assert any("p99999_00.png" in p for p in problems)
    assert name2 not in str(info.value)


def test_unreadable_images_are_reported_by_name(synth, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(synth, bad)
    examples = read_dataset(bad)
    with open(examples[2].generated, "wb") as f:
        f.write(b"not a png")
    with open(examples[5].saliency, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError) as info:
        check_readable(examples)
    assert len(info.value.problems) == 2
    assert examples[2].generated in str(info.value) and examples[5].saliency in str(info.value)


def test_manifests_jsonl_and_parquet(synth, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    examples = read_dataset(synth)
    rows = []
    for e in examples:
        rows.append({
            "generated": os.path.relpath(e.generated, synth),
            "product": os.path.relpath(e.product, synth),
            "caption": e.caption,
            "label": LABELS[e.label] if e.label % 2 else e.label,  # names and indices both work
            "product_id": "sku-" + e.product_id,
        })  # fmt: skip
    jsonl = os.path.join(synth, "manifest.jsonl")
    with open(jsonl, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    parquet = os.path.join(synth, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist([r | {"label": str(r["label"])} for r in rows]), parquet)
    for path in (jsonl, parquet):
        got = read_dataset(path)
        assert [g.label for g in got] == [e.label for e in examples]
        assert got[0].product_id.startswith("sku-") and os.path.isfile(got[0].generated)
        assert got[0].depth is None
    rows[3]["label"] = "Blurry"
    rows[7]["caption"] = ""
    bad = str(tmp_path / "bad.jsonl")
    with open(bad, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(DatasetError) as info:
        read_dataset(bad)
    assert len(info.value.problems) == 2
    assert rows[3]["generated"] in str(info.value) and "Blurry" in str(info.value)


def test_parse_label():
    assert parse_label("Space Mismatch") == 2 == parse_label("space_mismatch") == parse_label("2")
    assert parse_label(5) == 5
    for bad in ("Nope", 6, "-1"):
        with pytest.raises(ValueError):
            parse_label(bad)


def test_split_is_by_product_and_stable(synth):
    examples = read_dataset(synth)
    splits = split_by_product(examples, 0.2, 0.3, seed=1)
    assert sum(len(v) for v in splits.values()) == len(examples)
    owners = {}
    for name, part in splits.items():
        for e in part:
            assert owners.setdefault(e.product_id, name) == name  # a product lives in exactly one split
    again = split_by_product(list(reversed(examples)), 0.2, 0.3, seed=1)
    assert {k: sorted(e.id for e in v) for k, v in again.items()} == {
        k: sorted(e.id for e in v) for k, v in splits.items()
    }
    with pytest.raises(ValueError):
        split_by_product(examples, 0.6, 0.5)


def test_shards_hold_every_example_once_in_a_seeded_order(synth, tmp_path):
    import pyarrow.parquet as pq

    examples = read_dataset(synth)  # 48 rows, a product's images next to each other
    folder = str(tmp_path / "train")
    paths = write_shards(examples, folder, rows_per_shard=20, seed=7)
    tables = [pq.read_table(p).to_pylist() for p in paths]
    assert [len(t) for t in tables] == [20, 20, 8]
    rows = [r for t in tables for r in t]
    assert sorted(rows, key=lambda r: r["id"]) == sorted((e.to_dict() for e in examples), key=lambda r: r["id"])
    order = [r["id"] for r in rows]
    assert order != [e.id for e in examples]  # shuffled, so a batch does not hold one product's images
    again = write_shards(examples, folder, rows_per_shard=30, seed=7)  # rewritten: the old shards are gone
    assert sorted(os.listdir(folder)) == [os.path.basename(p) for p in again] and len(again) == 2
    assert [r["id"] for p in again for r in pq.read_table(p).to_pylist()] == order  # the seed fixes the order
    kept = write_shards(examples, str(tmp_path / "val"), rows_per_shard=100)
    assert [r["id"] for r in pq.read_table(kept[0]).to_pylist()] == [e.id for e in examples]


def test_average_precision_exact_values():
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie is one threshold
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_evaluate_and_confusion_matrix():
    probs = np.array([[0.7, 0.1, 0.1, 0.1, 0, 0], [0.2, 0.6, 0.1, 0.1, 0, 0], [0.6, 0, 0.4, 0, 0, 0]])
    labels = np.array([0, 1, 2])
    m = evaluate(probs, labels, threshold=0.5)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert m["confusion_matrix"][2][0] == 1 and np.trace(np.array(m["confusion_matrix"])) == 2
    assert m["per_class_f1"]["Unsuitable"] == 1.0 and m["per_class_f1"]["Space Mismatch"] == 0.0
    assert confusion_matrix([0, 0, 1], [0, 1, 1]).tolist()[0][:2] == [1, 1]
    json.dumps(m)
    p = np.linspace(0, 1, 101)
    y = p > 0.3
    t = calibrate_threshold(p, y, 0.95)
    assert y[p >= t].mean() >= 0.95 and t <= 0.31
    assert calibrate_threshold(p, np.zeros_like(y), 0.95) is None  # unreachable: said, not replaced by 0.5
