"""Training scenes of the toy generator: deterministic, laid out as the engine lays out products, prompted,
and checked before any training starts."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.prompts import load_prompt_config
from rfnet.config import LABELS
from toy.scenes import SceneSetError, check_scene_set, colour_name, decode_png, make_scene, write_scenes

TEMPLATES = load_prompt_config()


def test_a_scene_is_a_pure_function_of_index_and_seed():
    a, b = make_scene(3, 11, 64, TEMPLATES), make_scene(3, 11, 64, TEMPLATES)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["product"], b["product"])
    assert a["prompt"] == b["prompt"] and a["label"] == b["label"]
    other = make_scene(4, 11, 64, TEMPLATES)
    assert not np.array_equal(a["image"], other["image"])


@pytest.mark.parametrize("index", range(6))
def test_the_product_is_laid_out_like_the_engine_and_shown_unchanged(index):
    scene = make_scene(index, 0, 128, TEMPLATES)
    alpha = scene["product"][..., 3]
    ys, xs = np.nonzero(alpha >= 128)
    longer = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    # the template's image_scale of the canvas (0.7-0.78), centred
    assert 0.66 * 128 <= longer <= 0.8 * 128
    assert abs((ys.min() + ys.max()) / 2 - 63.5) <= 2 and abs((xs.min() + xs.max()) / 2 - 63.5) <= 2
    # inside the product the scene shows the product itself
    inside = alpha == 255
    diff = np.abs(scene["image"][inside].astype(int) - scene["product"][..., :3][inside].astype(int))
    assert diff.max() <= 1


def test_prompts_describe_the_scene_then_end_with_a_template():
    for i in range(8):
        scene = make_scene(i, 0, 64, TEMPLATES)
        head = scene["prompt"].split(", ")
        assert head[0].endswith(" wall") and head[1].endswith(" floor")
        assert head[2] in ("close-up", "medium shot", "wide room view")
        assert scene["caption"] in scene["prompt"]
        assert "{}" not in scene["prompt"]
        assert any(t.prompt.split("{}")[0] in scene["prompt"] for t in TEMPLATES)


def test_colour_names_come_from_the_palette():
    assert colour_name(np.array([250.0, 195, 210])) == "light pink"
    assert colour_name(np.array([40.0, 80, 200])) == "blue"


def test_write_then_check_a_scene_set(tmp_path):
    out = str(tmp_path / "scenes")
    counts = write_scenes(out, 12, seed=1, size=64)
    assert sum(counts.values()) == 12 and set(counts) == set(LABELS)
    meta = check_scene_set(out)
    assert meta["rows"] == 12 and meta["size"] == 64
    table = pq.read_table(meta["shards"])
    assert decode_png(table["image"][0].as_py()).shape == (64, 64, 3)
    assert decode_png(table["product"][0].as_py()).shape == (64, 64, 4)


def test_bad_scene_sets_are_refused_with_the_set_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SceneSetError, match="nowhere: not a folder"):
        check_scene_set(missing)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(SceneSetError, match="unfinished: no scenes.json"):
        check_scene_set(str(unfinished))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "scenes.json").write_text(json.dumps({"n": 0, "size": 64}))
    with pytest.raises(SceneSetError, match="empty: empty"):
        check_scene_set(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scenes.json").write_text(json.dumps({"n": 1, "size": 64}))
    (broken / "scenes-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(SceneSetError, match="broken: scenes-00000.parquet is unreadable"):
        check_scene_set(str(broken))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "scenes.json").write_text(json.dumps({"n": 1, "size": 64}))
    pq.write_table(pa.table({"id": ["s0"]}), os.path.join(wrong, "scenes-00000.parquet"))
    with pytest.raises(SceneSetError, match="lacks columns"):
        check_scene_set(str(wrong))
