"""Held-out evaluation of a generator: available rate, attempts, and diversity across seeds.

Ray-free, so the training recipe (on its rank-0 worker) and ``adloop eval-generator`` run the same code.
For a fixed set of held-out products and fixed seeds (``engine.seeds.attempt_seed(run_seed, sku, k)``,
the seeds ``adloop refresh`` would use with that run seed) it reports:

- ``available_rate``: the fraction of first attempts RFNet accepts (``P(Available) >= threshold``, the
  verdict the refresh job uses), plus ``argmax_rate`` (Available is the most likely class: the paper's
  "Ava") and ``mean_p_available``;
- ``expected_attempts``: ``1 / available_rate``, what Recurrent Generation needs on average without a cap;
- ``rejected_defects``: how many rejected first attempts the judge puts in each defect class;
- with a second, independent judge (``inspector``, e.g. ``rfnet.inspector.Inspector``: the paper's
  "Human Ava" beside RFNet's "Ava"): ``inspector_available_rate``, ``inspector_defects`` and
  ``inspector_agreement``, the share of the judge's accepted first attempts the inspector accepts too;
- optionally ``measured``: Recurrent Generation actually run (new seed per attempt, prompt rotation as
  in the engine) up to ``max_attempts``: accepted count, mean attempts of the accepted products (what
  the refresh summary reports) and all attempts spent per accepted product;
- ``diversity``: the mean pairwise RMS distance (pixel values in [0, 1]) between the backgrounds that
  ``n_seeds`` seeds give for the same product and prompt, averaged over products; and
  ``background_std``, the mean per-image standard deviation of background pixels. A collapse to one
  bland background shows as both falling while the available rate climbs.

Images are generated with :func:`rfft.sampling.sample`, which equals the engine's pipeline bit for bit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from engine.conditioning import paste_back
from engine.config import ConditioningConfig, GeneratorConfig
from engine.prepare import PromptPolicy, condition_row, read_image_bytes, stack_rows
from engine.sources import iter_records
from rfft import sampling
from rfnet.config import DEFAULT_PRESET


@dataclass
class Product:
    """A held-out (or training) product: its cutout bytes and caption."""

    sku_id: str
    image_bytes: bytes
    source: str
    caption: str = ""


def load_products(uri: str, limit: int | None = None, skip: int = 0) -> list[Product]:
    """Products from a folder of cutouts or a manifest (the inputs ``adloop generate/refresh`` read)."""
    out = []
    for n, record in enumerate(iter_records(uri)):
        if n < skip or record.error:
            continue
        if limit is not None and len(out) >= limit:
            break
        out.append(Product(record.sku_id, read_image_bytes(record.image_uri), record.image_uri, record.caption))
    if not out:
        raise ValueError(f"no usable products in {uri}")
    return out


def condition_rows(products: list[Product], size: int, attempt: int, policy: PromptPolicy) -> list[dict]:
    """``engine.prepare.condition_row`` for each product (attempt ``attempt``), with the caption kept."""
    cond = ConditioningConfig(size=size)
    rows = []
    for p in products:
        row = condition_row(p.sku_id, p.image_bytes, p.source, attempt, cond, policy, p.caption)
        row["caption"] = p.caption
        rows.append(row)
    return rows


def generate_rows(pipe, controlnet, rows: list[dict], gen: GeneratorConfig, batch_size: int = 8) -> np.ndarray:
    """Generate and paste back, as ``GenerateStage`` does; returns (N, S, S, 3) uint8."""
    out = []
    for i in range(0, len(rows), batch_size):
        b = stack_rows(rows[i : i + batch_size])
        prep = sampling.prepare_batch(pipe, b, gen.steps, gen.size)
        images = sampling.sample(pipe, controlnet, prep, gen.guidance_scale, gen.conditioning_scale)
        out.append(paste_back(images.permute(0, 2, 3, 1).float().cpu().numpy(), b["product_rgba"]))
    return np.concatenate(out)


def diversity(images: np.ndarray, background: np.ndarray) -> tuple[float, float]:
    """Diversity across seeds.

    Args:
        images: (P, K, S, S, 3) uint8, K seeds of P products.
        background: (P, S, S) bool, the pixels the generator paints (product alpha == 0).

    Returns:
        ``(mean pairwise background RMS distance, mean per-image background std)``, both in [0, 1] units.
    """
    x = images.astype(np.float32) / 255.0
    n_products, k = x.shape[:2]
    dists, stds = [], []
    for p in range(n_products):
        bg = x[p][:, background[p]]  # (K, n_pixels, 3)
        if bg.shape[1] == 0:
            continue
        stds += [float(bg[j].std(axis=0).mean()) for j in range(k)]
        for a in range(k):
            for b in range(a + 1, k):
                dists.append(float(np.sqrt(((bg[a] - bg[b]) ** 2).mean())))
    return (float(np.mean(dists)) if dists else 0.0), (float(np.mean(stds)) if stds else 0.0)


def judges(rfnet: str, device: str = "cpu", threshold: float | None = None, depth: str = DEFAULT_PRESET,
           saliency: str = DEFAULT_PRESET):  # fmt: skip
    """The judge named ``rfnet`` and the inspector beside it: ``(Inspector(), None)`` when the inspector is
    the judge itself, else ``(rfnet.Scorer(...), Inspector())``."""
    from rfnet import Scorer
    from rfnet.config import INSPECTOR
    from rfnet.inspector import Inspector

    if rfnet == INSPECTOR:
        return Inspector(), None
    return Scorer(rfnet, device=device, threshold=threshold, depth=depth, saliency=saliency), Inspector()


class Evaluator:
    """Scores a generator on fixed held-out products and seeds (see the module docstring).

    Args:
        products: the held-out products.
        gen: the generator settings (size, steps, guidance) evaluated.
        scorer: an ``rfnet.Scorer`` (the judge).
        run_seed: evaluation run seed; attempt k of product s uses ``attempt_seed(run_seed, s, k)``.
        n_seeds: seeds per product for the diversity figure (>= 2 to measure it).
        inspector: an optional second judge with the same ``score`` interface, reported beside the first.
    """

    def __init__(
        self,
        products: list[Product],
        gen: GeneratorConfig,
        scorer,
        run_seed: int = 0,
        n_seeds: int = 3,
        inspector=None,
    ):
        self.products, self.gen, self.scorer, self.run_seed = products, gen, scorer, run_seed
        self.inspector = inspector
        # Diversity compares seeds at a fixed prompt; the first attempt's prompt is the refresh job's.
        fixed = PromptPolicy(run_seed=run_seed, rotate_after=0)
        self.rows = [condition_rows(products, gen.size, k, fixed) for k in range(1, max(1, n_seeds) + 1)]
        self.captions = [p.caption for p in products]

    @torch.no_grad()
    def __call__(self, pipe, controlnet, max_attempts: int = 0) -> dict:
        images = np.stack([generate_rows(pipe, controlnet, rows, self.gen) for rows in self.rows], axis=1)
        product = np.stack([r["product_rgba"] for r in self.rows[0]])
        first = self.scorer.score(product, images[:, 0], self.captions)
        rate = float(first.accepted.mean())
        div, bg_std = diversity(images, product[..., 3] == 0) if images.shape[1] > 1 else (float("nan"),) * 2
        metrics = {
            "n_products": len(self.products),
            "available_rate": rate,
            "argmax_rate": float((first.probabilities.argmax(axis=1) == 0).mean()),
            "mean_p_available": float(first.p_available.mean()),
            "expected_attempts": (1.0 / rate) if rate > 0 else float("inf"),
            # the judge's most likely defect of each rejected first attempt
            "rejected_defects": dict(Counter(d for d, ok in zip(first.defect, first.accepted, strict=True) if not ok)),
            "diversity": div,
            "background_std": bg_std,
        }
        if self.inspector is not None:
            second = self.inspector.score(product, images[:, 0], self.captions)
            metrics["inspector_available_rate"] = float(second.accepted.mean())
            metrics["inspector_defects"] = dict(
                Counter(d for d, ok in zip(second.defect, second.accepted, strict=True) if not ok)
            )
            both = second.accepted[first.accepted]
            metrics["inspector_agreement"] = float(both.mean()) if len(both) else float("nan")
        if max_attempts > 0:
            metrics["measured"] = self.recurrent(pipe, controlnet, max_attempts)
        return metrics

    @torch.no_grad()
    def recurrent(self, pipe, controlnet, max_attempts: int) -> dict:
        """Recurrent Generation as the engine runs it: attempt k uses the refresh job's seed and prompt."""
        policy = PromptPolicy(run_seed=self.run_seed)  # default prompt rotation, as in adloop refresh
        pending = list(range(len(self.products)))
        attempts = np.zeros(len(self.products), dtype=np.int64)
        accepted = np.zeros(len(self.products), dtype=bool)
        for k in range(1, max_attempts + 1):
            if not pending:
                break
            prods = [self.products[i] for i in pending]
            rows = condition_rows(prods, self.gen.size, k, policy)
            images = generate_rows(pipe, controlnet, rows, self.gen)
            result = self.scorer.score(np.stack([r["product_rgba"] for r in rows]), images, [p.caption for p in prods])
            for j, i in enumerate(pending):
                attempts[i] = k
                accepted[i] = bool(result.accepted[j])
            pending = [i for j, i in enumerate(pending) if not result.accepted[j]]
        n_acc = int(accepted.sum())
        return {
            "max_attempts": max_attempts,
            "accepted": n_acc,
            "needs_review": int(len(self.products) - n_acc),
            "mean_attempts": float(attempts.mean()),
            # attempts of the accepted SKUs only: the refresh summary's "mean_attempts_per_accepted"
            "mean_attempts_of_accepted": float(attempts[accepted].mean()) if n_acc else float("nan"),
            # every attempt spent (needs_review SKUs included) per accepted SKU
            "attempts_per_accepted": float(attempts.sum() / n_acc) if n_acc else float("inf"),
        }
