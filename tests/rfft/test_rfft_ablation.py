"""The RFFT benchmark's figures: the gap closed, the runs of a beta sweep, and both judges on the same images."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from bench import rfft_ablation as bench


def test_gap_closed_reproduces_the_papers_figures():
    # docs/paper.md: RFNet 56.4 -> 85.5 closes 0.67 of the gap, the human inspectors' 70.1 -> 86.3 closes 0.54
    assert bench.gap_closed(0.564, 0.855) == pytest.approx(0.667, abs=1e-3)
    assert bench.gap_closed(0.701, 0.863) == pytest.approx(0.542, abs=1e-3)
    assert bench.gap_closed(0.5, 0.25) == pytest.approx(-0.5)  # a loss is a negative share
    assert math.isnan(bench.gap_closed(1.0, 1.0))


def test_beta_sweep_runs_each_regulariser_at_each_beta_and_no_regulariser_once():
    runs = bench.plan("none,kl,cc", "1,10,100")
    assert runs == [("none", 1.0), ("kl", 1.0), ("kl", 10.0), ("kl", 100.0), ("cc", 1.0), ("cc", 10.0), ("cc", 100.0)]
    assert [bench.run_key(*r) for r in runs[:2]] == ["none", "kl-beta1"]
    assert bench.plan("cc", "100") == [("cc", 100.0)]  # the old single-beta usage


def _evaluation(argmax, at_threshold, inspector, diversity):
    return {"argmax_rate": argmax, "available_rate": at_threshold, "inspector_available_rate": inspector,
            "mean_p_available": argmax, "diversity": diversity}  # fmt: skip


def test_rows_table_and_plot_report_every_run_against_the_base():
    results = {
        "base": _evaluation(0.5, 0.25, 0.6, 0.2),
        "runs": {
            "none": {"regulariser": "none", "wall_seconds": 60, "after": _evaluation(1.0, 0.75, 0.6, 0.1)},
            "cc-beta10": {"regulariser": "cc", "wall_seconds": 60, "after": _evaluation(0.75, 0.5, 0.8, 0.19)},
        },
    }
    points = bench.rows(results)
    assert [name for name, _, _ in points] == ["base", "none", "cc-beta10"]
    cc = points[2][2]
    assert cc["gap_closed_rfnet"] == pytest.approx(0.5)
    assert cc["gap_closed_rfnet_at_threshold"] == pytest.approx(1 / 3)
    assert cc["gap_closed_inspector"] == pytest.approx(0.5)
    assert cc["diversity_ratio"] == pytest.approx(0.95)
    assert "| cc-beta10 | 75.0% | 50.0% | 0.50 | 80.0% | 0.50 |" in bench.table(results, points)
    svg = ET.fromstring(bench.ava_diversity_svg(points))
    assert len([e for e in svg if e.tag.endswith("circle")]) == 3 + 1  # a point per row, and the legend's


class _Recorder:
    """A judge that accepts nothing and keeps the images it was shown."""

    threshold = 0.5

    def __init__(self):
        self.seen = []

    def score(self, product, generated, captions):
        from types import SimpleNamespace

        self.seen.append(generated.copy())
        n = len(generated)
        probabilities = np.tile([0.0, 1.0, 0, 0, 0, 0], (n, 1))
        return SimpleNamespace(accepted=np.zeros(n, bool), probabilities=probabilities,
                               p_available=np.zeros(n), defect=["Unsuitable"] * n)  # fmt: skip


def test_the_inspector_judges_the_same_images_as_rfnet():
    from engine.config import GeneratorConfig
    from engine.models import build_pipeline
    from engine.samples import SAMPLES_DIR
    from rfft.evaluate import Evaluator, load_products

    gen = GeneratorConfig(base_model="tiny", size=32, steps=2, device="cpu")
    pipe = build_pipeline(gen)
    judge, inspector = _Recorder(), _Recorder()
    Evaluator(load_products(str(SAMPLES_DIR), limit=2), gen, judge, n_seeds=2, inspector=inspector)(
        pipe, pipe.controlnet
    )
    assert len(judge.seen) == len(inspector.seen) == 1
    np.testing.assert_array_equal(judge.seen[0], inspector.seen[0])
