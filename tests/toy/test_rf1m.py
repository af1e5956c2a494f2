"""The generated RF1M (``adloop synth rf1m --from-generator``): the toy generator's images of the world's
products, in the RF1M layout that ``train-rfnet`` reads, each labelled by the inspector, with the maps the
scorer would compute; and a rendered set's maps replaced by the same models' maps."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from engine.config import GeneratorConfig
from rfnet.config import LABELS
from rfnet.data import read_rf1m
from rfnet.depth import load_depth
from rfnet.inspector import Inspector
from rfnet.saliency import load_saliency
from toy.rf1m import maps_for, write_generated_rf1m, write_maps


def _rgb(path: str) -> np.ndarray:
    return cv2.imread(path)[..., ::-1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gen") / "rf1m")
    gen = GeneratorConfig.for_model("toy", steps=2, device="cpu")
    return out, write_generated_rf1m(out, 3, gen, images_per_product=2, seed=5)


def test_layout_labels_and_provenance(generated):
    out, provenance = generated
    examples = read_rf1m(out)
    assert len(examples) == 6 and sum(provenance["counts"].values()) == 6
    assert {e.id.split("_")[0] for e in examples} == {"p00000", "p00001", "p00002"}  # split groups by product
    assert all(LABELS[e.label] in LABELS for e in examples)
    verdicts = [json.loads(line) for line in open(os.path.join(out, "verdicts.jsonl"))]
    # two attempts of a product: two seeds and two prompt templates (the template rotates every attempt)
    first, second = verdicts[0], verdicts[1]
    assert first["seed"] != second["seed"] and first["prompt"] != second["prompt"]
    assert provenance["generator"]["base_model"] == "toy" and provenance["judge"] == "inspector"


def test_labels_are_the_inspectors_and_maps_the_scorers(generated):
    out, _ = generated
    inspector = Inspector()
    depth, saliency = load_depth("toy"), load_saliency("toy")
    captions = dict(line.rstrip("\n").split("\t") for line in open(os.path.join(out, "caption.txt")))
    labels = dict(line.rstrip("\n").split("\t") for line in open(os.path.join(out, "label.txt")))
    names = sorted(labels)
    images = np.stack([_rgb(os.path.join(out, "generated", n)) for n in names])
    d, s = maps_for(images, depth, saliency)
    for i, name in enumerate(names):
        cutout = cv2.cvtColor(
            cv2.imread(os.path.join(out, "product", name), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA
        )
        assert cutout.shape == (128, 128, 4) and images[i].shape == (128, 128, 3)
        assert inspector.judge(cutout, images[i], captions[name]).label == labels[name]
        # the same computation on the same machine: maps within one 8-bit level
        stored = cv2.imread(os.path.join(out, "depth", name), cv2.IMREAD_GRAYSCALE)
        assert np.abs(stored.astype(int) - d[i]).max() <= 1
        stored = cv2.imread(os.path.join(out, "saliency", name), cv2.IMREAD_GRAYSCALE)
        assert np.abs(stored.astype(int) - s[i]).max() <= 1


def test_write_maps_replaces_a_rendered_sets_maps(tmp_path):
    from rfnet.synth import generate_rf1m

    out = str(tmp_path / "renders")
    generate_rf1m(out, 4, seed=2, size=64)
    before = cv2.imread(os.path.join(out, "depth", "p00000_00.png"), cv2.IMREAD_GRAYSCALE)
    assert write_maps(out) == 4
    after = cv2.imread(os.path.join(out, "depth", "p00000_00.png"), cv2.IMREAD_GRAYSCALE)
    image = _rgb(os.path.join(out, "generated", "p00000_00.png"))
    expected, _ = maps_for(image[None], load_depth("toy"), load_saliency("toy"))
    assert not np.array_equal(before, after) and np.abs(after.astype(int) - expected[0]).max() <= 1


def test_bad_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_products and images_per_product"):
        write_generated_rf1m(str(tmp_path / "x"), 0, GeneratorConfig.for_model("toy", steps=2))


def test_a_rerun_resumes_a_killed_run_and_refuses_another_runs_folder(generated, tmp_path):
    import shutil

    out, provenance = generated
    copy = str(tmp_path / "killed")
    shutil.copytree(out, copy)
    # what a kill leaves: no label.txt, one product's last cutout not yet written, one image truncated
    os.remove(os.path.join(copy, "label.txt"))
    os.remove(os.path.join(copy, "product", "p00001_01.png"))
    with open(os.path.join(copy, "generated", "p00002_00.png"), "r+b") as f:
        f.truncate(40)
    gen = GeneratorConfig.for_model("toy", steps=2, device="cpu")
    again = write_generated_rf1m(copy, 3, gen, images_per_product=2, seed=5)
    assert again["resumed_products"] == 1  # p00000 only: the other two are generated again
    assert again["counts"] == provenance["counts"]
    assert open(os.path.join(copy, "label.txt")).read() == open(os.path.join(out, "label.txt")).read()
    for name in ("p00000_00.png", "p00001_01.png"):  # resumed, and regenerated on the same machine
        assert np.array_equal(_rgb(os.path.join(copy, "generated", name)), _rgb(os.path.join(out, "generated", name)))
    other = GeneratorConfig.for_model("toy", steps=3, device="cpu")
    with pytest.raises(ValueError, match="another run.*steps"):
        write_generated_rf1m(copy, 3, other, images_per_product=2, seed=5)
