"""The scoring stage: depth + saliency + RFNet on every candidate, as a Ray-free callable class.

Works on rows that carry ``m`` candidates each (arrays shaped ``(B, m, ...)``); rows whose ``error`` is
set (bad input) pass through unscored.

Besides a real RFNet (``tiny`` or a checkpoint folder) it accepts ``inspector``, the independent
rule-based judge of the synthetic world (``rfnet.inspector``: the stand-in for the paper's human
inspectors, whose verdicts are 0 or 1), and ``fixed-rate:P``, a *measuring
instrument* for benchmarks and tests of the feedback loop, never a production scorer: its verdicts are
a pure function of each candidate's seed and accept a known fraction ``P`` of candidates, so the loop's
behaviour (attempts per accepted SKU ~ 1/P) can be checked against theory.
"""

from __future__ import annotations

import time

import numpy as np

from cluster.paths import ModelPathError, checked_path
from engine.columns import encode_lists
from engine.config import FIXED_RATE_PREFIX, ScorerConfig
from engine.torch_thread import TorchThread
from rfnet import LABELS
from rfnet.checkpoint_files import CONFIG_NAME, read_meta
from rfnet.config import INSPECTOR, MAP_PRESET_NAMES, PRESET_NAMES, TRAINED_RFNETS


def checked_scorer_paths(rfnet: str, depth: str, saliency: str) -> tuple[str, str, str]:
    """The RFNet checkpoint, depth model and saliency model: presets as they are, local folders checked
    (without loading weights) and made absolute by ``cluster.paths.checked_path``.

    Raises:
        ModelPathError: a name that is neither a preset nor a folder holding that model (nor, for saliency, a
            ``.pth`` file).
    """
    if rfnet not in (*PRESET_NAMES, *TRAINED_RFNETS, INSPECTOR) and not rfnet.startswith(FIXED_RATE_PREFIX):
        try:
            read_meta(rfnet)  # config.json, the weights file and the label set: its error names all three
        except FileNotFoundError as err:
            raise ModelPathError(str(err)) from None
        rfnet = checked_path(rfnet, "RFNet checkpoint", inside=CONFIG_NAME)
    depth = checked_path(depth, "depth model folder", presets=MAP_PRESET_NAMES, folder=True)
    official = saliency.endswith((".pth", ".pt"))  # U^2-Net's own weights file (rfnet.saliency.load_u2net)
    saliency = checked_path(saliency, "saliency model" if official else "saliency model folder", presets=MAP_PRESET_NAMES,
                            folder=not official, suffixes=(".pth", ".pt") if official else None)  # fmt: skip
    return rfnet, depth, saliency


class FixedRateScorer:
    """Accepts a known fraction of candidates, decided by a hash of the candidate's seed."""

    def __init__(self, rate: float):
        self.rate = rate
        self.threshold = 1.0 - rate
        self.model_id = f"fixed-rate-{rate:g}"

    def score_seeds(self, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # splitmix64-style mixing: attempt seeds are already hashes, this only decorrelates further.
        x = seeds.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(31)
        p = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        probs = np.empty((len(p), len(LABELS)), np.float32)
        probs[:, 0] = p
        probs[:, 1:] = ((1.0 - p) / (len(LABELS) - 1))[:, None]
        return p.astype(np.float32), probs


class ScoreStage:
    def __init__(self, cfg: ScorerConfig):
        self.cfg = cfg
        if cfg.rfnet.startswith(FIXED_RATE_PREFIX):
            self.scorer = FixedRateScorer(float(cfg.rfnet[len(FIXED_RATE_PREFIX) :]))
            self.threshold = self.scorer.threshold if cfg.threshold is None else cfg.threshold
        elif cfg.rfnet == INSPECTOR:
            from rfnet.inspector import Inspector

            self.scorer = Inspector()
            self.threshold = self.scorer.threshold
        else:
            from rfnet import Scorer

            self.torch = TorchThread()
            self.scorer = self.torch.run(
                Scorer, cfg.rfnet, device=cfg.device, threshold=cfg.threshold, depth=cfg.depth, saliency=cfg.saliency
            )
            self.threshold = self.scorer.threshold
        self.model_id = self.scorer.model_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adds ``p_available`` (B, m) float32, ``probabilities`` (B, m, 6) float32, ``defects_json`` (B,) JSON lists,
        ``accepted`` (B, m) bool, ``score_seconds_batch`` (B,), ``threshold`` and ``scorer_id`` (B,).
        Rows with an ``error`` get p = 0, not accepted, defect ''."""
        start = time.perf_counter()
        generated = batch["generated"]
        b, m = generated.shape[:2]
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        p_available = np.zeros((b, m), np.float32)
        probabilities = np.zeros((b, m, len(LABELS)), np.float32)
        defect = np.full((b, m), "", dtype=object)
        if ok.any():
            rows = np.nonzero(ok)[0]
            if isinstance(self.scorer, FixedRateScorer):
                p, probs = self.scorer.score_seeds(batch["seed"][rows].reshape(-1))
            else:
                product = batch["product_rgba"][rows].reshape(-1, *batch["product_rgba"].shape[2:])
                images = generated[rows].reshape(-1, *generated.shape[2:])
                captions = [str(batch["caption"][r]) for r in rows for _ in range(m)]
                if self.cfg.rfnet == INSPECTOR:  # numpy and OpenCV only: no torch thread needed
                    result = self.scorer.score(product, images, captions)
                else:
                    result = self.torch.run(self.scorer.score, product, images, captions)
                p, probs = result.p_available, result.probabilities
            p_available[rows] = p.reshape(len(rows), m)
            probabilities[rows] = probs.reshape(len(rows), m, len(LABELS))
            defect[rows] = np.array(LABELS)[1 + probabilities[rows][..., 1:].argmax(-1)]
        accepted = ok[:, None] & (p_available >= self.threshold)
        seconds = np.where(ok, (time.perf_counter() - start) / max(1, ok.sum()), 0.0)
        return {
            **batch,
            "p_available": p_available,
            "probabilities": probabilities,
            "defects_json": encode_lists(defect),
            "accepted": accepted,
            "score_seconds_batch": seconds,
            "threshold": np.full(b, self.threshold, np.float32),
            "scorer_id": np.full(b, self.model_id, dtype=object).astype(str),
        }
