"""From a SKU record and attempt numbers to the generator's inputs (the CPU side of an attempt).

``candidate_inputs`` is the one builder of a candidate's inputs: the refresh's ``ConditionCandidates``
stage, the plain loop of ``adloop generate``, RFFT's rollouts and evaluation (through ``condition_row``)
and the tests all go through it, so an attempt's seed, prompt and conditions are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from cluster.storage import read_bytes
from engine.conditioning import Condition, ProductImageError, build_condition, decode_product, layout
from engine.config import ConditioningConfig
from engine.prompts import PromptTemplate, load_prompt_config, render_prompt, template_index
from engine.seeds import attempt_seed


@dataclass
class PromptPolicy:
    """How prompts and seeds are chosen per attempt."""

    templates: list[PromptTemplate] = field(default_factory=load_prompt_config)
    run_seed: int = 0
    """The run's seed; each attempt's seed is ``attempt_seed(run_seed, sku_id, attempt)``."""
    rotate_after: int = 2
    """Move to the next prompt template after this many failed attempts (0 = never)."""
    mix_caption: bool = False
    """Prefix the product caption to the scene prompt."""


def candidate_inputs(
    sku_id: str,
    image_bytes: bytes,
    source: str,
    attempts: Iterable[int],
    cond: ConditioningConfig,
    policy: PromptPolicy,
    caption: str = "",
    prompt_override: str = "",
) -> list[dict]:
    """Everything each of ``attempts`` of one SKU needs, one dict of columns per attempt, in order.

    Attempt ``k`` gets the seed ``attempt_seed(policy.run_seed, sku_id, k)`` and the template the policy
    rotates to; ``prompt_override`` (a manifest's ``prompt``) replaces the rendered prompt. The image is
    decoded once and laid out once per distinct ``image_scale``; attempts sharing a scale share the
    (read-only) condition arrays.

    Raises:
        ProductImageError: the image is unusable, named by ``source`` (the caller turns it into a failed row).
    """
    rgba = decode_product(image_bytes, source, cond)
    first_seed = attempt_seed(policy.run_seed, sku_id, 1)
    conditions: dict[float, Condition] = {}
    rows = []
    for attempt in attempts:
        seed = attempt_seed(policy.run_seed, sku_id, attempt)
        template = policy.templates[template_index(len(policy.templates), first_seed, attempt, policy.rotate_after)]
        prompt, negative = render_prompt(template, seed, caption, policy.mix_caption)
        if template.image_scale not in conditions:
            try:
                laid_out = layout(rgba, cond, template.image_scale)
            except ProductImageError as err:
                raise ProductImageError(source, err.reason, err.detail) from None
            conditions[template.image_scale] = build_condition(laid_out, cond)
        c = conditions[template.image_scale]
        rows.append(
            {
                "sku_id": sku_id,
                "attempt": attempt,
                "seed": seed,
                "prompt": prompt_override or prompt,
                "negative_prompt": negative,
                "product_rgba": c.product_rgba,
                "image": c.image,
                "inpaint_mask": c.inpaint_mask,
                "control": c.control,
            }
        )
    return rows


def condition_row(
    sku_id: str,
    image_bytes: bytes,
    source: str,
    attempt: int,
    cond: ConditioningConfig,
    policy: PromptPolicy,
    caption: str = "",
    prompt_override: str = "",
) -> dict:
    """:func:`candidate_inputs` for a single attempt: one row.

    Raises:
        ProductImageError: the image is unusable (the caller turns it into a failed row).
    """
    return candidate_inputs(sku_id, image_bytes, source, [attempt], cond, policy, caption, prompt_override)[0]


def read_image_bytes(uri: str) -> bytes:
    """Read a product image; a missing or unreadable file is a ProductImageError naming it."""
    try:
        return read_bytes(uri)
    except FileNotFoundError as err:
        raise MissingImageError(uri) from err
    except (OSError, ValueError) as err:
        raise MissingImageError(uri, f"{type(err).__name__}: {err}") from err


class MissingImageError(ValueError):
    """The product image could not be read at all (missing file, permission, bad URI)."""

    def __init__(self, uri: str, detail: str = "file not found"):
        self.source, self.reason, self.detail = uri, "missing_file", detail
        super().__init__(f"{uri}: missing_file ({detail})")


CONDITION_COLUMNS = ("product_rgba", "image", "inpaint_mask", "control")


def stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows of ``condition_row`` -> one batch of columns."""
    return {
        key: np.stack([r[key] for r in rows]) if key in CONDITION_COLUMNS else np.array([r[key] for r in rows])
        for key in rows[0]
    }
