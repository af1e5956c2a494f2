"""Seeds, prompt configs, SKU sources and output paths: pure logic, exact values."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.paths import safe_name
from engine.prompts import (
    COLOURS,
    PromptConfigError,
    PromptTemplate,
    load_prompt_config,
    render_prompt,
    template_index,
)
from engine.seeds import attempt_seed
from engine.sources import SourceError, iter_records


def test_attempt_seed_is_a_pure_function_with_pinned_values():
    assert attempt_seed(0, "sku-1", 1) == attempt_seed(0, "sku-1", 1)
    assert attempt_seed(0, "sku-1", 1) == 2639342149222485021
    seeds = {attempt_seed(r, s, a) for r in (0, 1) for s in ("a", "b") for a in (1, 2, 3)}
    assert len(seeds) == 12  # every (run, sku, attempt) differs
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError):
        attempt_seed(0, "a", 0)


def test_bundled_prompt_config_is_valid_and_has_a_colour_slot():
    templates = load_prompt_config()
    assert len(templates) == 5
    assert any(t.flag == 1 for t in templates)
    assert all(0.7 <= t.image_scale <= 0.78 for t in templates)


def test_colour_slot_is_filled_from_the_seed():
    t = PromptTemplate(prompt="product on a {} background", flag=1)
    prompt, _ = render_prompt(t, seed=5 << 8)
    assert prompt == f"product on a {COLOURS[5 % len(COLOURS)]} background"
    assert render_prompt(t, seed=123456)[0] == render_prompt(t, seed=123456)[0]
    assert (
        render_prompt(PromptTemplate(prompt="desk"), 1, caption="a red mug", mix_caption=True)[0] == "a red mug, desk"
    )


def test_template_rotates_after_the_configured_failures():
    picks = [template_index(5, seed=3, attempt=a, rotate_after=2) for a in range(1, 8)]
    assert picks == [3, 3, 4, 4, 0, 0, 1]
    assert [template_index(5, 3, a, 0) for a in (1, 4, 9)] == [3, 3, 3]


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"negative_prompt": "x"}]', "entry 0: needs a non-empty string 'prompt'"),
        ('[{"prompt": "a {} b", "flag": 1}, {"prompt": "no slot", "flag": 1}]', "entry 1: flag 1 needs exactly one"),
        ('[{"prompt": "a", "image_scale": 3}]', "image_scale must be in"),
        ('[{"prompt": "a", "colour": "red"}]', "unknown keys"),
    ],
)
def test_bad_prompt_configs_name_the_file_and_entry(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(PromptConfigError, match=message) as info:
        load_prompt_config(path)
    assert str(path) in str(info.value)


def test_missing_prompt_config():
    with pytest.raises(PromptConfigError, match="not found"):
        load_prompt_config("/nonexistent/prompts.json")


def test_safe_name_never_leaves_the_folder_and_never_collides():
    ids = ["a/b", "a_b", "../../etc/passwd", "x\x00y", "..", "", "ünï cødé", "a" * 500]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for name in names:
        assert "/" not in name and "\x00" not in name and not name.startswith(".")
        assert os.path.basename(name) == name and len(name) <= 100
    assert safe_name("bottle-001") == safe_name("bottle-001")


def _rows():
    return [
        {"sku_id": "a", "image_uri": "img/a.png", "caption": "a mug"},
        {"sku_id": "b", "image_uri": "/abs/b.png", "category": "home"},
        {"sku_id": "", "image_uri": "img/c.png"},
        {"sku_id": "d", "image_uri": ""},
    ]


def _check(records, base):
    assert [r.sku_id for r in records][:2] == ["a", "b"]
    assert records[0].image_uri == os.path.join(base, "img/a.png") and records[0].caption == "a mug"
    assert records[1].image_uri == "/abs/b.png" and records[1].category == "home"
    assert records[2].error == "missing sku_id" and records[2].sku_id.startswith("<missing sku_id")
    assert records[3].error == "missing image_uri"


def test_manifests_parquet_csv_jsonl(tmp_path):
    rows = [{"caption": "", "category": "", **r} for r in _rows()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    with open(tmp_path / "m.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(tmp_path / "m.csv", "w") as f:
        f.write("sku_id,image_uri,caption,category\n")
        f.writelines(f"{r['sku_id']},{r['image_uri']},{r.get('caption', '')},{r.get('category', '')}\n" for r in rows)
    for name in ("m.parquet", "m.jsonl", "m.csv"):
        _check(list(iter_records(str(tmp_path / name))), str(tmp_path))


def test_jsonl_bad_lines_become_error_records(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"sku_id": "a", "image_uri": "a.png"}\n{broken\n[1, 2]\n\n')
    records = list(iter_records(str(tmp_path / "m.jsonl")))
    assert len(records) == 3
    assert "invalid JSON" in records[1].error and "line 2" in records[1].error
    assert "not a JSON object" in records[2].error


def test_folder_source_uses_file_stems_and_skips_non_images(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [r.sku_id for r in iter_records(str(tmp_path))] == ["a", "b"]
    assert [r.sku_id for r in iter_records(f"file://{tmp_path}")] == ["a", "b"]


def test_missing_or_unknown_inputs_raise_naming_them(tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        list(iter_records(str(tmp_path / "nope")))
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(SourceError, match="x.xlsx"):
        list(iter_records(str(tmp_path / "x.xlsx")))
