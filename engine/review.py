"""The human loop: a person reviews the needs_review queue and an audit sample of accepted SKUs.

Everything lives under ``OUT/review/``:

    OUT/review/session.json            the audit sample, frozen when the review first opened
    OUT/review/decisions/<ns>-<id>.json one file per decision, never overwritten: the log
    OUT/review/originals/<id>.json     a SKU's final row before its first human decision
    OUT/review/products/<id>.png       the product cutout as an RGBA PNG (copied from the input once)
    OUT/review/_staging/               scratch of the commit path

A decision is written (atomically, under its own name) before anything else happens, so a killed server
loses nothing it acknowledged; the latest decision of a SKU wins and every earlier one stays in the log.
It then becomes the SKU's final row through ``engine.commit.replace_final_rows``: a human-accepted
candidate becomes the SKU's image (status accepted), a SKU whose every candidate a person rejects ends
needs_review; both with ``decided_by = "review"``. Opening the review again re-applies the latest
decisions whose row does not show them yet (a kill between the two steps).

Image paths come only from the output's own manifests (``image_path`` of results and candidates,
``image_uri`` of results), and nothing outside OUT is ever served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass

import pyarrow.compute as pc

from cluster.storage import absolute, exists, filesystem, join, read_bytes, write_bytes_atomic
from engine.commit import replace_final_rows
from engine.outputs import RESULT_SCHEMA, complete_parts, image_rel, iter_column_batches
from engine.paths import safe_name
from engine.report_html import relative_link
from engine.review_config import ReviewConfig
from rfnet.config import LABELS

logger = logging.getLogger(__name__)

QUEUES = ("review", "audit")
"""``review``: the needs_review queue; ``audit``: the sample of auto-accepted SKUs."""
AVAILABLE = LABELS[0]


class ReviewError(Exception):
    """A request the review cannot honour; the app answers ``status`` with ``code`` and ``detail``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def audit_key(seed: int, sku_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{sku_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without trials.

    Wilson rather than the normal approximation: audits are small and precision sits near 1, where the
    normal interval runs past 1 and collapses to a point at 100%.
    """
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cand_id(attempt: int) -> str:
    return f"a{int(attempt):02d}"


def is_refresh_output(out: str) -> bool:
    return bool(complete_parts(join(out, "results"))) and exists(join(out, "candidates"))


# ---- what reading the output gives ---------------------------------------------------------------------------


@dataclass
class Sku:
    """A SKU under review: its final row as the refresh (or a person) left it, and its candidates."""

    sku_id: str
    queue: str
    row: dict
    candidates: list[dict]
    auto: str | None = None
    """For an audit SKU: the candidate RFNet accepted (the one whose precision the audit measures)."""


CANDIDATE_COLUMNS = ["sku_id", "attempt", "seed", "prompt", "p_available", "defect", "accepted", "image_path"]


class ReviewSession:
    """One output's review: the two queues, the decision log, and the path from a decision to a final row.

    Methods are thread-safe (FastAPI runs plain handlers on a thread pool).
    """

    def __init__(self, out: str, cfg: ReviewConfig | None = None):
        if not is_refresh_output(out):
            raise ReviewError(400, "not_a_refresh_output", f"{out} has no results/ and candidates/")
        # Absolute, so that the check that a served file lies under OUT compares like with like.
        self.out = absolute(out)
        self.cfg, self._cfg_given = cfg or ReviewConfig(), cfg is not None
        self.root = join(out, "review")
        self._lock = threading.Lock()
        rows, self.part_of = self._read_results()
        session = self._session(rows)
        self.latest = self._read_log()
        audit_ids = [a["sku_id"] for a in session["audit"] if a["sku_id"] in rows]
        review_ids = sorted(
            s
            for s, r in rows.items()
            if (r["status"] == "needs_review" and r.get("decided_by") != "review")
            or self.latest.get(s, {}).get("queue") == "review"
        )
        candidates = self._read_candidates(set(audit_ids) | set(review_ids))
        autos = {a["sku_id"]: a["auto"] for a in session["audit"]}
        self.queues: dict[str, list[Sku]] = {
            "review": [Sku(s, "review", rows[s], candidates.get(s, [])) for s in review_ids],
            "audit": [Sku(s, "audit", rows[s], candidates.get(s, []), autos[s]) for s in audit_ids],
        }
        self.index = {(q, s.sku_id): s for q, skus in self.queues.items() for s in skus}
        self._reconcile()

    # -- reading

    def _read_results(self) -> tuple[dict[str, dict], dict[str, str]]:
        """Final rows of the SKUs that can be reviewed (accepted, needs_review), and every SKU's part.

        A first pass reads three columns of every part; only parts holding a reviewable SKU are then read
        whole, one at a time.
        """
        import pyarrow.parquet as pq

        fs, _ = filesystem(self.out)
        part_of, wanted_parts = {}, set()
        for part in complete_parts(join(self.out, "results")):
            name = part.rstrip("/").rsplit("/", 1)[-1]
            with fs.open(part, "rb") as f:
                table = pq.read_table(f, columns=["sku_id", "status"])
            for sku, status in zip(
                table.column("sku_id").to_pylist(), table.column("status").to_pylist(), strict=True
            ):
                part_of[sku] = name
                if status in ("accepted", "needs_review"):
                    wanted_parts.add(part)
        rows = {}
        for part in sorted(wanted_parts):
            with fs.open(part, "rb") as f:
                table = pq.read_table(f)
            for row in table.to_pylist():
                if row["status"] in ("accepted", "needs_review"):
                    rows[row["sku_id"]] = {f.name: row.get(f.name) for f in RESULT_SCHEMA}
        return rows, part_of

    def _read_candidates(self, wanted: set[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        if not wanted:
            return out
        import pyarrow as pa

        value_set = pa.array(sorted(wanted), pa.string())
        for batch in iter_column_batches(join(self.out, "candidates"), CANDIDATE_COLUMNS):
            for row in batch.filter(pc.is_in(batch.column("sku_id"), value_set=value_set)).to_pylist():
                out.setdefault(row["sku_id"], []).append(row)
        for sku, rows in out.items():
            rows.sort(key=lambda r: (r["attempt"], r["image_path"] or ""))
            seen: set[int] = set()
            # (SKU, attempt) names a candidate; a copy left by a rerun round would only repeat it.
            out[sku] = [
                r | {"id": cand_id(r["attempt"])} for r in rows if not (r["attempt"] in seen or seen.add(r["attempt"]))
            ]
        return out

    def _session(self, rows: dict[str, dict]) -> dict:
        """session.json: the audit sample, drawn once so that the population it measures stays put while
        the queue's SKUs become accepted (by a person) and audited ones needs_review."""
        uri = join(self.root, "session.json")
        if exists(uri):
            session = json.loads(read_bytes(uri))
            if self._cfg_given and (session["audit_size"], session["seed"]) != (self.cfg.audit, self.cfg.seed):
                logger.warning(
                    "keeping the audit sample drawn when this review began (%d SKUs, seed %d)",
                    session["audit_size"], session["seed"],
                )  # fmt: skip
            return session
        auto = [s for s, r in rows.items() if r["status"] == "accepted" and r.get("decided_by") != "review"]
        sample = sorted(sorted(auto, key=lambda s: audit_key(self.cfg.seed, s))[: self.cfg.audit])
        accepted = self._read_candidates(set(sample))
        audit = []
        for sku in sample:
            ok = [c for c in accepted.get(sku, []) if c["accepted"]]
            if ok:  # the refresh ships the first accepted candidate
                audit.append({"sku_id": sku, "auto": ok[0]["id"]})
        session = {"audit_size": self.cfg.audit, "seed": self.cfg.seed, "audit": audit, "created_at": time.time()}
        write_bytes_atomic(uri, json.dumps(session, indent=2).encode())
        return session

    def _read_log(self) -> dict[str, dict]:
        latest: dict[str, dict] = {}
        for decision in iter_decisions(self.out):
            latest[decision["sku_id"]] = decision  # file names sort by time: the later one wins
        return latest

    # -- what the page sees

    def progress(self) -> dict:
        out = {}
        for queue, skus in self.queues.items():
            reviewed = sum(1 for s in skus if self.decision_of(queue, s.sku_id) is not None)
            out[queue] = {"total": len(skus), "reviewed": reviewed}
        out["audit"]["precision"] = audit_precision(
            {s.sku_id: s.auto for s in self.queues["audit"]},
            {s.sku_id: self.latest[s.sku_id] for s in self.queues["audit"] if s.sku_id in self.latest},
        )
        return out

    def decision_of(self, queue: str, sku_id: str) -> dict | None:
        decision = self.latest.get(sku_id)
        return decision if decision is not None and decision["queue"] == queue else None

    def items(self, queue: str) -> list[dict]:
        """Every SKU of a queue as the page shows it; image URLs are opaque indices into this session."""
        skus = self._queue(queue)
        with self._lock:
            return [self._item(queue, i, s) for i, s in enumerate(skus)]

    def _item(self, queue: str, i: int, s: Sku) -> dict:
        return {
            "sku_id": s.sku_id,
            "index": i,
            "caption": s.row.get("caption") or "",
            "status": s.row["status"],
            "decided_by": s.row.get("decided_by"),
            "product": f"img/{queue}/{i}/product",
            "auto": s.auto,
            "candidates": [
                {
                    "id": c["id"],
                    "attempt": c["attempt"],
                    "p_available": c["p_available"],
                    "defect": c["defect"],
                    "rfnet_accepted": bool(c["accepted"]),
                    "image": f"img/{queue}/{i}/{c['id']}",
                }
                for c in s.candidates
            ],
            "decision": self.decision_of(queue, s.sku_id),
        }

    def _queue(self, queue: str) -> list[Sku]:
        if queue not in self.queues:
            raise ReviewError(404, "unknown_queue", f"queue {queue!r}; expected one of {list(QUEUES)}")
        return self.queues[queue]

    def image_file(self, queue: str, index: int, which: str) -> tuple[str, str]:
        """The local file behind an image URL and its media type; only files under OUT.

        Raises:
            ReviewError: 404 for an unknown SKU or candidate, or an image that is gone.
        """
        skus = self._queue(queue)
        if not 0 <= index < len(skus):
            raise ReviewError(404, "unknown_sku", f"{queue} has no SKU #{index}")
        sku = skus[index]
        if which == "product":
            return self.product_png(sku), "image/png"
        cand = next((c for c in sku.candidates if c["id"] == which), None)
        if cand is None:
            raise ReviewError(404, "unknown_candidate", f"SKU {sku.sku_id!r} has no candidate {which!r}")
        return self.output_file(cand["image_path"]), "image/png"

    def output_file(self, path: str | None) -> str:
        rel = relative_link(self.out, path)
        if rel is None:
            raise ReviewError(404, "image_missing", "the image this manifest names is gone")
        root = os.path.realpath(self.out)
        real = os.path.realpath(join(self.out, rel))
        if not real.startswith(root + os.sep):  # a manifest path (or a link) that leads out of OUT
            raise ReviewError(403, "outside_output", "only files under the output folder are served")
        return real

    def product_png(self, sku: Sku) -> str:
        """The product cutout as an RGBA PNG under OUT/review/products/, copied from the input on first use."""
        dest = join(self.root, "products", f"{safe_name(sku.sku_id)}.png")
        if not exists(dest):
            write_bytes_atomic(dest, cutout_png(sku.row.get("image_uri")))
        return os.path.realpath(dest)

    # -- deciding

    def decide(self, payload: object) -> dict:
        """Validate, log and apply one decision; returns the SKU's item and the new progress.

        ``payload``: ``{"sku_id", "queue", "accept": candidate id or null, "labels": {candidate id: label}}``.
        ``accept`` alone means that candidate is Available; without it every candidate needs a label.

        Raises:
            ReviewError: 404 for an unknown queue, SKU or candidate; 422 for a label outside the six, a
                decision that labels too few candidates, or one that accepts a candidate it labels a defect.
        """
        decision = self._validated(payload)
        with self._lock:
            decision["decided_at"] = time.time()
            name = f"{time.time_ns():020d}-{safe_name(decision['sku_id'])}.json"
            write_bytes_atomic(join(self.root, "decisions", name), json.dumps(decision).encode())
            self.latest[decision["sku_id"]] = decision
            sku = self.index[(decision["queue"], decision["sku_id"])]
            self._apply(sku, decision)
            item = self._item(sku.queue, self.queues[sku.queue].index(sku), sku)
        return {"item": item, "progress": self.progress()}

    def _validated(self, payload: object) -> dict:
        if not isinstance(payload, dict):
            raise ReviewError(422, "bad_body", "send a JSON object")
        queue, sku_id = payload.get("queue"), payload.get("sku_id")
        if queue not in QUEUES:
            raise ReviewError(404, "unknown_queue", f"queue {queue!r}; expected one of {list(QUEUES)}")
        if not isinstance(sku_id, str) or (queue, sku_id) not in self.index:
            raise ReviewError(404, "unknown_sku", f"no SKU {str(sku_id)[:200]!r} in the {queue} queue")
        sku = self.index[(queue, sku_id)]
        ids = [c["id"] for c in sku.candidates]
        labels, accept = payload.get("labels") or {}, payload.get("accept")
        if not isinstance(labels, dict):
            raise ReviewError(422, "bad_labels", "labels must map candidate ids to labels")
        for cid, label in [*labels.items(), *([(accept, AVAILABLE)] if accept is not None else [])]:
            if cid not in ids:
                raise ReviewError(404, "unknown_candidate", f"SKU {sku_id!r} has no candidate {str(cid)[:40]!r}")
            if label not in LABELS:
                raise ReviewError(422, "unknown_label", f"label {str(label)[:40]!r}; expected one of {list(LABELS)}")
        if accept is not None and labels.get(accept, AVAILABLE) != AVAILABLE:
            raise ReviewError(422, "conflict", f"candidate {accept} is accepted and labelled {labels[accept]!r}")
        if accept is None and set(labels) != set(ids):
            missing = [i for i in ids if i not in labels]
            raise ReviewError(422, "incomplete", f"accept a candidate or label every one; unlabelled: {missing}")
        labels = dict(labels) | ({accept: AVAILABLE} if accept is not None else {})
        return {"sku_id": sku_id, "queue": queue, "accept": accept, "labels": labels}

    def _apply(self, sku: Sku, decision: dict) -> None:
        """Make the SKU's final row (and image) show ``decision``, through the refresh's commit path."""
        original = self._original(sku)
        chosen = decision["accept"] or next(
            (c["id"] for c in sku.candidates if decision["labels"].get(c["id"]) == AVAILABLE), None
        )
        row = dict(original)
        if chosen is not None:
            cand = next(c for c in sku.candidates if c["id"] == chosen)
            image = cand
            row.update(
                status="accepted", attempts=cand["attempt"], seed=cand["seed"], prompt=cand["prompt"],
                p_available=cand["p_available"], defect=None,
            )  # fmt: skip
        else:
            # Nothing is shippable: the SKU keeps (or, from the audit, falls back to) its best candidate,
            # with the reviewer's verdict on it as its defect.
            image = max(sku.candidates, key=lambda c: c["p_available"] or 0.0)
            row.update(
                status="needs_review", seed=image["seed"], prompt=image["prompt"],
                p_available=image["p_available"], defect=decision["labels"].get(image["id"]),
            )  # fmt: skip
        row.update(decided_by="review", finished_at=time.time())
        # The SKU's image stays where its row says (found again if the output was moved since); the row
        # names it relative to OUT, as the refresh does.
        rel = relative_link(self.out, row["image_path"]) or image_rel(safe_name(sku.sku_id))
        write_bytes_atomic(join(self.out, rel), read_bytes(self.output_file(image["image_path"])))
        row["image_path"] = rel
        replace_final_rows(self.out, {sku.sku_id: row}, self.part_of, join(self.root, "_staging"))
        sku.row = row

    def _original(self, sku: Sku) -> dict:
        """The SKU's final row before any human decision (saved on the first one), so a later decision
        that rejects what an earlier one accepted starts from the refresh's own row."""
        uri = join(self.root, "originals", f"{safe_name(sku.sku_id)}.json")
        if exists(uri):
            return json.loads(read_bytes(uri))
        write_bytes_atomic(uri, json.dumps(sku.row).encode())
        return dict(sku.row)

    def _reconcile(self) -> None:
        """Apply the latest decisions whose final row does not show them (the server died in between)."""
        for (queue, sku_id), sku in self.index.items():
            decision = self.decision_of(queue, sku_id)
            if decision is None:
                continue
            decided_at = decision.get("decided_at", 0.0)
            if sku.row.get("decided_by") != "review" or (sku.row.get("finished_at") or 0.0) < decided_at:
                logger.info("re-applying the latest decision on %r", sku_id)
                self._apply(sku, decision)


def cutout_png(uri: str | None) -> bytes:
    """A product cutout (any format the refresh accepts) as RGBA PNG bytes, alpha = product mask.

    Raises:
        ReviewError: 404 when the input image is gone or unreadable.
    """
    import io

    from PIL import Image

    from engine.conditioning import ConditioningConfig, decode_product

    try:
        rgba = decode_product(read_bytes(uri), uri, ConditioningConfig())
    except Exception as err:  # a missing or broken input costs its picture, never the review
        raise ReviewError(404, "product_missing", f"the product cutout is unreadable ({type(err).__name__})") from None
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def iter_decisions(out: str):
    """Every decision in the log, oldest first (each file is whole: they are written atomically)."""
    fs, path = filesystem(join(out, "review", "decisions"))
    if not fs.exists(path):
        return
    for name in sorted(fs.glob(path.rstrip("/") + "/*.json")):
        with fs.open(name, "rb") as f:
            yield json.loads(f.read())


def audit_precision(autos: dict[str, str | None], decisions: dict[str, dict]) -> dict:
    """The measured precision of auto-acceptance: the share of audited SKUs whose auto-accepted candidate
    the reviewer labelled Available, with its 95% Wilson interval."""
    judged = correct = 0
    for sku, decision in decisions.items():
        label = decision["labels"].get(autos.get(sku) or "")
        if decision["queue"] != "audit" or label is None:
            continue
        judged += 1
        correct += label == AVAILABLE
    interval = wilson_interval(correct, judged)
    return {
        "judged": judged,
        "correct": correct,
        "precision": correct / judged if judged else None,
        "ci95": list(interval) if interval else None,
    }


def review_summary(out: str) -> dict | None:
    """What the run report says about the human review: reviewed counts and the audit precision.
    Reads only OUT/review/ (no candidates); None when nobody has opened the review."""
    uri = join(out, "review", "session.json")
    if not exists(uri):
        return None
    session = json.loads(read_bytes(uri))
    latest: dict[str, dict] = {}
    for decision in iter_decisions(out):
        latest[decision["sku_id"]] = decision
    queue = [d for d in latest.values() if d["queue"] == "review"]
    accepted = sum(1 for d in queue if d["accept"] or AVAILABLE in d["labels"].values())
    autos = {a["sku_id"]: a["auto"] for a in session["audit"]}
    return {
        "queue_reviewed": len(queue),
        "queue_accepted": accepted,
        "queue_rejected": len(queue) - accepted,
        "audit_size": len(session["audit"]),
        "audit_reviewed": sum(1 for d in latest.values() if d["queue"] == "audit"),
        "decisions_logged": sum(1 for _ in iter_decisions(out)),
        "precision": audit_precision(autos, {s: d for s, d in latest.items() if d["queue"] == "audit"}),
    }
