"""A miniature RF1M of *generated* images: the toy generator's outputs, labelled by the inspector.

In the paper RFNet learns from people's labels of images the generator really made (RF1M). This writes
such a set for the toy world:

- products of the synthetic world (``rfnet.synth.make_product`` with ``seed``), each an unplaced RGBA
  cutout as a catalog holds it, laid out by the engine exactly as ``adloop refresh`` lays it out;
- ``images_per_product`` generations of each, attempt ``k`` with the seed and prompt template that
  attempt ``k`` of ``adloop refresh --seed SEED`` would use, the template rotating at every attempt, so
  the set covers the authors' templates;
- each image labelled by ``rfnet.inspector.Inspector`` from the image, the laid-out cutout and the caption;
- depth and saliency computed by the given models on the generated image, as ``rfnet.Scorer`` computes
  them at scoring time (``maps_for``; ``write_maps`` gives a rendered set the same maps).

Layout: the RF1M folders of ``rfnet.synth`` (``generated/ product/ depth/ saliency/ label.txt
caption.txt``) plus ``verdicts.jsonl`` (the inspector's label and measurements of each image) and
``provenance.json`` (generator, sampling, seeds). ``label.txt`` is written last: its presence marks a
complete set. A product whose cutout cannot be laid out becomes a line of ``failures.jsonl``.

Rerunning into the folder of a killed run resumes it: a product whose images are all on disk and readable
is not generated again (PNG is lossless, so they are the images the run made); its labels and maps are
recomputed, which is cheap and deterministic. ``run.json`` records what the images depend on (generator,
sampling, world seed, images per product), and a rerun with other values is refused rather than mixed in.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter

import cv2
import numpy as np

from rfnet.config import TOY_PRESET

logger = logging.getLogger(__name__)


def product_cutouts(n: int, seed: int, size: int) -> list[dict]:
    """``n`` products of the synthetic world as catalog rows: ``sku_id``, PNG ``image_bytes``, ``caption``, and
    ``unsuitable`` (the world drew the cutout damaged; a catalog would not know, a benchmark may leave it out)."""
    from PIL import Image

    from rfnet.synth import make_product

    rows = []
    for pid in range(n):
        product = make_product(pid, seed, 2 * size)
        rgba = cv2.resize(product.rgba, (size, size), interpolation=cv2.INTER_AREA)
        buf = io.BytesIO()
        Image.fromarray(np.clip(np.rint(rgba * 255), 0, 255).astype(np.uint8), "RGBA").save(buf, "PNG")
        rows.append(
            {
                "sku_id": f"p{pid:05d}",
                "image_bytes": buf.getvalue(),
                "caption": product.caption,
                "unsuitable": product.unsuitable,
            }
        )
    return rows


def maps_for(images: np.ndarray, depth_model, saliency_model) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 images -> uint8 depth and saliency maps (N, S, S), as the scorer computes them."""
    import torch

    from rfnet.preprocess import to_tensor

    with torch.no_grad():
        g = to_tensor(images)
        depth = depth_model(g)[:, 0].numpy()
        saliency = saliency_model(g)[:, 0].numpy()
    return tuple(np.clip(np.rint(m * 255), 0, 255).astype(np.uint8) for m in (depth, saliency))


def write_maps(folder: str, depth: str = TOY_PRESET, saliency: str = TOY_PRESET, batch_size: int = 32) -> int:
    """Replace the depth and saliency maps of the RF1M set in ``folder`` with the given models' maps of its
    generated images (so that a rendered set's maps come from the same models as a generated set's)."""
    from rfnet.depth import load_depth
    from rfnet.saliency import load_saliency

    depth_model, saliency_model = load_depth(depth), load_saliency(saliency)
    names = sorted(os.listdir(os.path.join(folder, "generated")))
    for sub in ("depth", "saliency"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i in range(0, len(names), batch_size):
        chunk = names[i : i + batch_size]
        images = np.stack([cv2.imread(os.path.join(folder, "generated", n))[..., ::-1] for n in chunk])
        d, s = maps_for(images, depth_model, saliency_model)
        for name, dm, sm in zip(chunk, d, s, strict=True):
            cv2.imwrite(os.path.join(folder, "depth", name), dm)
            cv2.imwrite(os.path.join(folder, "saliency", name), sm)
    return len(names)


def write_generated_rf1m(
    output: str,
    n_products: int,
    gen,
    images_per_product: int = 4,
    seed: int = 0,
    depth: str = TOY_PRESET,
    saliency: str = TOY_PRESET,
    batch_size: int = 8,
) -> dict:
    """Generate with ``gen`` (an ``engine.config.GeneratorConfig``), judge and write the set (see the module
    docstring); returns its provenance: label counts, failures and timing."""
    import time

    from engine.config import ConditioningConfig
    from engine.generate import GenerateStage
    from engine.prepare import ProductImageError, PromptPolicy, condition_row, stack_rows
    from rfnet.depth import load_depth
    from rfnet.inspector import Inspector
    from rfnet.saliency import load_saliency

    if n_products < 1 or images_per_product < 1:
        raise ValueError("n_products and images_per_product must be >= 1")
    start = time.perf_counter()
    for sub in ("generated", "product", "depth", "saliency"):
        os.makedirs(os.path.join(output, sub), exist_ok=True)
    _claim_folder(output, gen, seed, images_per_product)
    generate = GenerateStage(gen)  # the refresh job's own generation stage: model loaded once
    size = gen.size
    depth_model, saliency_model = load_depth(depth), load_saliency(saliency)
    inspector = Inspector()
    cond = ConditioningConfig(size=size)
    policy = PromptPolicy(run_seed=seed, rotate_after=1)  # a new template at every attempt
    counts: Counter = Counter()
    labels, captions, verdicts, failures = [], [], [], []
    resumed = 0
    for product in product_cutouts(n_products, seed, size):
        sku, caption = product["sku_id"], product["caption"]
        try:
            rows = [
                condition_row(sku, product["image_bytes"], f"synth:{sku}", k, cond, policy, caption)
                for k in range(1, images_per_product + 1)
            ]
        except ProductImageError as err:  # the world's cutouts are valid; a user's manifest might not be
            failures.append({"sku_id": sku, "error": str(err)})
            continue
        names = [f"{sku}_{k:02d}.png" for k in range(len(rows))]
        images = _written_images(output, names)
        if images is None:
            images = np.concatenate([
                generate(stack_rows(rows[i : i + batch_size]))["generated"]
                for i in range(0, len(rows), batch_size)
            ])  # fmt: skip
        else:
            resumed += 1
        cutouts = np.stack([r["product_rgba"] for r in rows])
        d, s = maps_for(images, depth_model, saliency_model)
        for k, (row, name) in enumerate(zip(rows, names, strict=True)):
            verdict = inspector.judge(cutouts[k], images[k], caption)
            cv2.imwrite(os.path.join(output, "generated", name), images[k][..., ::-1])
            cv2.imwrite(os.path.join(output, "product", name), cv2.cvtColor(cutouts[k], cv2.COLOR_RGBA2BGRA))
            cv2.imwrite(os.path.join(output, "depth", name), d[k])
            cv2.imwrite(os.path.join(output, "saliency", name), s[k])
            labels.append(f"{name}\t{verdict.label}\n")
            captions.append(f"{name}\t{caption}\n")
            verdicts.append({"name": name, "label": verdict.label, "prompt": str(row["prompt"]),
                             "seed": int(row["seed"]), "measures": _plain(verdict.measures)})  # fmt: skip
            counts[verdict.label] += 1
    with open(os.path.join(output, "verdicts.jsonl"), "w") as f:
        f.writelines(json.dumps(v) + "\n" for v in verdicts)
    if failures:
        with open(os.path.join(output, "failures.jsonl"), "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in failures)
    provenance = {
        "generator": {"base_model": gen.base_model, "controlnet": gen.controlnet, "size": size, "steps": gen.steps,
                      "guidance_scale": gen.guidance_scale, "scheduler": gen.scheduler},
        "products": {"world_seed": seed, "n": n_products, "images_per_product": images_per_product},
        "maps": {"depth": depth, "saliency": saliency}, "judge": inspector.model_id,
        "counts": dict(counts), "failures": len(failures), "resumed_products": resumed, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    with open(os.path.join(output, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=2)
    with open(os.path.join(output, "caption.txt"), "w") as f:
        f.writelines(captions)
    with open(os.path.join(output, "label.txt"), "w") as f:  # last: marks a complete set
        f.writelines(labels)
    logger.info("wrote %d generated images to %s: %s", len(labels), output, dict(counts))
    return provenance


def _claim_folder(output: str, gen, seed: int, images_per_product: int) -> None:
    """Record what this run's images depend on; refuse a folder holding another run's images."""
    run = {"base_model": str(gen.base_model), "controlnet": gen.controlnet and str(gen.controlnet),
           "size": gen.size, "steps": gen.steps, "guidance_scale": gen.guidance_scale,
           "scheduler": gen.scheduler, "world_seed": seed, "images_per_product": images_per_product}  # fmt: skip
    path = os.path.join(output, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in run.keys() | before.keys() if run.get(k) != before.get(k))
        if changed:
            raise ValueError(
                f"{output} holds images of another run (differs in {', '.join(changed)}); "
                "use a new output folder or the earlier settings"
            )
        return
    with open(path, "w") as f:
        json.dump(run, f, indent=2)


def _written_images(output: str, names: list[str]) -> np.ndarray | None:
    """The product's images as a killed run wrote them (RGB), or None if any is missing or unreadable."""
    images = []
    for name in names:
        if not os.path.exists(os.path.join(output, "product", name)):  # written after its image: complete
            return None
        image = cv2.imread(os.path.join(output, "generated", name), cv2.IMREAD_COLOR)
        if image is None:
            return None
        images.append(image[..., ::-1])
    return np.stack(images)


def _plain(measures: dict) -> dict:
    """The inspector's measurements as JSON values (numpy scalars become floats)."""
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in measures.items()}
