"""``adloop review export``: the review's labels as an RF1M-format set that ``adloop train-rfnet`` reads.

For each SKU's latest decision, every candidate it labels becomes one example::

    DIR/generated/<id>_aNN.png   the candidate image (RGB)
    DIR/product/<id>_aNN.png     the product cutout (RGBA, alpha = product)
    DIR/depth/<id>_aNN.png       its depth map, and
    DIR/saliency/<id>_aNN.png    its saliency map (8-bit), from the models the scorer used
    DIR/caption.txt, DIR/label.txt

``<id>`` is the SKU's safe file name, so ``rfnet.data`` groups a SKU's candidates into one product for its
splits. The maps are computed here because RFNet's training reads them with the data by default (the
refresh never stores them). ``label.txt`` is written last: a folder with one is a whole set.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cluster.storage import read_bytes, write_bytes_atomic
from engine.config import ScorerConfig
from engine.paths import safe_name
from engine.review import ReviewError, ReviewSession

logger = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


@dataclass
class ExportConfig:
    """Where the set goes and which models draw its maps."""

    to: str
    """Destination folder (created; files of an earlier export there are replaced)."""
    depth: str = ScorerConfig.depth
    """Depth model (folder or 'tiny'): the one the refresh's scorer used."""
    saliency: str = ScorerConfig.saliency
    """Saliency model (folder or 'tiny'): the one the refresh's scorer used."""
    map_size: int = 256
    """Longest side of the stored maps, in px (RFNet resizes every input anyway)."""


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def export(session: ReviewSession, cfg: ExportConfig) -> dict:
    """Write every labelled candidate of the session's latest decisions as an RF1M-format set.

    Returns:
        ``{"examples", "skus", "skipped", "labels": {label: count}}``; a SKU whose product cutout is
        unreadable is skipped (and logged), never the export.
    """
    import torch

    from rfnet.depth import load_depth
    from rfnet.saliency import load_saliency

    estimators = {"depth": load_depth(cfg.depth), "saliency": load_saliency(cfg.saliency)}
    labels_txt, captions_txt, counts = [], [], {}
    skus = skipped = 0
    for queue, items in session.queues.items():
        for sku in items:
            decision = session.decision_of(queue, sku.sku_id)
            if decision is None:
                continue
            try:
                product = read_bytes(session.product_png(sku))
            except ReviewError as err:
                logger.warning("skipping %r: %s", sku.sku_id, err.detail)
                skipped += 1
                continue
            skus += 1
            caption = _SPACE.sub(" ", sku.row.get("caption") or "").strip()
            for cand in sku.candidates:
                label = decision["labels"].get(cand["id"])
                if label is None:
                    continue
                name = f"{safe_name(sku.sku_id)}_{cand['id']}.png"
                with Image.open(io.BytesIO(read_bytes(session.output_file(cand["image_path"])))) as im:
                    rgb = np.asarray(im.convert("RGB"))
                write_bytes_atomic(os.path.join(cfg.to, "generated", name), _png(rgb, "RGB"))
                write_bytes_atomic(os.path.join(cfg.to, "product", name), product)
                small = Image.fromarray(rgb)
                small.thumbnail((cfg.map_size, cfg.map_size))
                x = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)[None].float() / 255.0
                for kind, estimate in estimators.items():
                    with torch.no_grad():
                        m = (estimate(x)[0, 0].numpy() * 255).round().astype(np.uint8)
                    write_bytes_atomic(os.path.join(cfg.to, kind, name), _png(m, "L"))
                labels_txt.append(f"{name}\t{label}\n")
                captions_txt.append(f"{name}\t{caption}\n")
                counts[label] = counts.get(label, 0) + 1
    write_bytes_atomic(os.path.join(cfg.to, "caption.txt"), "".join(captions_txt).encode())
    write_bytes_atomic(os.path.join(cfg.to, "label.txt"), "".join(labels_txt).encode())
    return {"examples": len(labels_txt), "skus": skus, "skipped": skipped, "labels": counts}
