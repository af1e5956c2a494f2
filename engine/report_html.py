"""The report page itself: HTML, inline CSS and inline SVG charts from what ``engine.report`` gathered.

Everything that reaches the page is escaped (SKU ids may hold any character, NUL included), images
are embedded as small thumbnails, and every link is relative to the output root so the folder can
move. The headline figures carry ``data-key`` attributes so tests (and scripts) can find them.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

from PIL import Image

from cluster.storage import exists, is_relative, join, read_bytes

if TYPE_CHECKING:
    from engine.report import ReportConfig, Scan

logger = logging.getLogger(__name__)

# ---- links and thumbnails ------------------------------------------------------------------------------------

# Where older refreshes kept images (candidates/images/ inside the dataset folder), and where they live now.
_OUT_FOLDERS = ("/candidates/images/", "/candidate_images/", "/images/")


def relative_link(out: str, path: str | None) -> str | None:
    """A link from ``out/report.html`` to an image the refresh wrote, relative to ``out``; None if missing.

    The refresh records paths relative to ``out``. Older refreshes recorded absolute ones: an output
    folder that was moved since still holds its images at the same place relative to its root, which is
    then found from the layout (``images/``, ``candidates/images/``).
    """
    if not path:
        return None
    root = out.rstrip("/") + "/"
    if is_relative(path):
        rel = path
    elif path.startswith(root):
        rel = path[len(root) :]
    else:
        # candidates/images/ first: its tail also ends in images/
        at = next((at for at in (path.rfind(folder) for folder in _OUT_FOLDERS) if at >= 0), -1)
        if at < 0:
            return None
        rel = path[at + 1 :]
    return rel if exists(join(out, rel)) else None


def source_link(out: str, uri: str | None) -> str | None:
    """A link to a product cutout: a relative path for a local file, the URI for a web one, else None."""
    if not uri:
        return None
    if uri.startswith(("http://", "https://")):
        return uri
    if "://" in uri or "://" in out or not os.path.isfile(uri):
        return None
    return os.path.relpath(os.path.abspath(uri), os.path.abspath(out))


def href(link: str) -> str:
    """``link`` quoted for an ``href`` attribute (web URIs are only escaped)."""
    if link.startswith(("http://", "https://")):
        return html.escape(link, quote=True)
    return quote(link.replace(os.sep, "/"), safe="/.-_~")


def thumbnail(uri: str, px: int) -> str | None:
    """A ``data:`` URI of a copy of the image at ``uri`` at most ``px`` on a side.

    JPEG, or WebP where the image has transparency (product cutouts). None for a missing or unreadable
    file: the page then says so instead of showing a broken image.
    """
    try:
        with Image.open(io.BytesIO(read_bytes(uri))) as img:
            img.draft("RGB", (px, px))  # a JPEG source decodes at a reduced scale
            img.thumbnail((px, px))
            buf = io.BytesIO()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img.convert("RGBA").save(buf, format="WEBP", quality=70)
                mime = "image/webp"
            else:
                img.convert("RGB").save(buf, format="JPEG", quality=70)
                mime = "image/jpeg"
    except Exception as err:  # a missing or corrupt file costs its thumbnail, never the report
        logger.debug("no thumbnail for %s: %s", uri, err)
        return None
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# ---- formatting ----------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(value) -> str:
    """HTML-escaped text; control characters (NUL in an id, ...) become U+FFFD."""
    return html.escape(_CONTROL.sub("\ufffd", "" if value is None else str(value)), quote=True)


def fmt_int(n: int | None) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_num(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:,.0f}" if x >= 1000 else f"{x:.2f}")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# ---- charts --------------------------------------------------------------------------------------------------


def bar_chart(rows: list[tuple[str, float, str]], vmax: float, color: str, label: str) -> str:
    """A horizontal bar chart as inline SVG: one ``(label, value, annotation)`` per bar."""
    if not rows:
        return '<p class="empty">nothing to chart yet</p>'
    bar_h, gap, left, width, right = 22, 8, 150, 640, 170
    height = len(rows) * (bar_h + gap) + gap
    span = width - left - right
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{esc(label)}">'
    ]
    for i, (name, value, note) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = 0 if vmax <= 0 else max(1.0, span * value / vmax) if value > 0 else 0
        parts.append(
            f'<text x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{esc(name)}</text>'
            f'<rect x="{left}" y="{y}" width="{span}" height="{bar_h}" class="track"/>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>'
            f'<text x="{left + span + 8}" y="{y + bar_h * 0.7:.1f}">{esc(note)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def acceptance_chart(scan: Scan) -> str:
    rows = []
    for attempt in sorted(scan.generated):
        n, ok = scan.generated[attempt], scan.accepted[attempt]
        rate = ok / n if n else 0.0
        rows.append((f"attempt {attempt}", rate, f"{fmt_pct(rate)} of {n:,}"))
    return bar_chart(rows, 1.0, "#2f8f5b", "acceptance rate by attempt number")


def defect_chart(scan: Scan, top: int = 12) -> str:
    total = sum(scan.defects.values())
    common = scan.defects.most_common(top)
    rows = [(name, count, f"{count:,} ({fmt_pct(count / total)})") for name, count in common]
    rest = total - sum(count for _, count in common)
    if rest:
        rows.append(("other", rest, f"{rest:,} ({fmt_pct(rest / total)})"))
    return bar_chart(rows, max((r[1] for r in rows), default=0), "#c2553a", "defect classes among rejected candidates")


# ---- sections ------------------------------------------------------------------------------------------------


def _picture(src_uri: str | None, link: str | None, alt: str, px: int, css: str = "") -> str:
    """A thumbnail that links to the full image; a placeholder when the file is gone."""
    data = thumbnail(src_uri, px) if src_uri else None
    if data is None:
        return f'<div class="missing {css}" style="width:{px}px;height:{px}px">no image</div>'
    img = f'<img class="{css}" src="{data}" alt="{esc(alt)}" width="{px}" height="{px}">'
    return f'<a href="{href(link)}">{img}</a>' if link else img


def _output_image(out: str, path: str | None, alt: str, px: int) -> str:
    rel = relative_link(out, path)
    return _picture(join(out, rel) if rel else None, rel, alt, px)


def _shown(n_shown: int, total: int, what: str) -> str:
    if total == 0:
        return f'<p class="note">No {what}.</p>'
    if n_shown >= total:
        return f'<p class="note">Showing all {total:,} {what}.</p>'
    return (
        f'<p class="note">Showing {n_shown:,} of {total:,} {what}: a fixed sample (the same SKUs on every '
        "rebuild). Every row is in <code>results/</code> (Parquet).</p>"
    )


def headline(summary: dict) -> str:
    status, this_run, models = summary.get("status", {}), summary.get("this_run", {}), summary.get("models", {})
    skus = summary.get("skus") or 0
    kpis = [
        ("skus", "SKUs in", fmt_int(skus), ""),
        ("accepted", "accepted", fmt_int(status.get("accepted")), "good"),
        ("needs_review", "needs review", fmt_int(status.get("needs_review")), "warn"),
        ("failed", "failed", fmt_int(status.get("failed")), "bad"),
        ("first_attempt_acceptance", "first-attempt acceptance", fmt_pct(summary.get("first_attempt_acceptance")), ""),
        (
            "mean_attempts_per_accepted",
            "mean attempts per accepted SKU",
            fmt_num(summary.get("mean_attempts_per_accepted")),
            "",
        ),
        ("images_per_second", "images / s (last run)", fmt_num(this_run.get("images_per_second")), ""),
        ("wall_seconds", "wall time (last run)", fmt_duration(summary.get("wall_seconds")), ""),
    ]
    cards = "".join(
        f'<div class="kpi {css}" data-key="{key}"><div class="v">{value}</div><div class="k">{esc(name)}</div></div>'
        for key, name, value, css in kpis
    )
    rows = "".join(
        f'<tr><th>{esc(name)}</th><td data-model="{esc(name)}"><code>{esc(models.get(name) or "none")}</code></td></tr>'
        for name in ("base_model", "controlnet", "lora", "rfnet")
    )
    run = (
        f"run {esc(summary.get('run_id') or 'n/a')} &middot; {fmt_int(summary.get('candidates'))} candidates scored "
        "(all runs into this output) &middot; counts cover every run into this output, speed and time the last one"
    )
    return f'<section><div class="kpis">{cards}</div><p class="note">{run}</p><table class="models">{rows}</table></section>'


def gallery(out: str, scan: Scan, cfg: ReportConfig) -> str:
    tiles = []
    for row in scan.gallery:
        pic = _output_image(out, row["image_path"], row["sku_id"], cfg.thumb_px)
        p = "n/a" if row["p_available"] is None else f"{row['p_available']:.2f}"
        tiles.append(
            f'<figure class="tile">{pic}<figcaption><b>{esc(row["sku_id"])}</b>'
            f"<span>attempt {row['attempts']} &middot; P {p}</span></figcaption></figure>"
        )
    note = _shown(len(scan.gallery), scan.status["accepted"], "accepted SKUs")
    return f'<section id="accepted"><h2>Accepted images</h2>{note}<div class="grid">{"".join(tiles)}</div></section>'


def review_queue(out: str, scan: Scan, cfg: ReportConfig) -> str:
    blocks = []
    for row in scan.review:
        cands = scan.review_candidates.get(row["sku_id"], [])
        best = max((c["p_available"] or 0.0 for c in cands), default=None)
        tiles = []
        for c in cands[: cfg.candidates_per_sku]:
            kept = " kept" if best is not None and (c["p_available"] or 0.0) == best else ""
            pic = _output_image(out, c["image_path"], f"{row['sku_id']} attempt {c['attempt']}", cfg.thumb_px)
            p = "n/a" if c["p_available"] is None else f"{c['p_available']:.3f}"
            tiles.append(
                f'<figure class="tile cand{kept}">{pic}<figcaption><span>attempt {c["attempt"]}</span>'
                f'<span class="p" data-p="{esc(c["p_available"])}">P(Available) {p}</span>'
                f'<span class="defect">{esc(c["defect"] or "none")}</span></figcaption></figure>'
            )
        if len(cands) > cfg.candidates_per_sku:
            tiles.append(f'<p class="more">+{len(cands) - cfg.candidates_per_sku} more in candidates/</p>')
        source = _picture(
            row["image_uri"], source_link(out, row["image_uri"]), "product cutout", cfg.thumb_px, "cutout"
        )
        blocks.append(
            f'<div class="review"><figure class="tile product">{source}<figcaption><b>{esc(row["sku_id"])}</b>'
            f"<span>{esc(row.get('caption') or '')}</span><span>product cutout</span></figcaption></figure>"
            f'<div class="cands">{"".join(tiles) or "<p class=empty>no candidates found</p>"}</div></div>'
        )
    note = _shown(len(scan.review), scan.status["needs_review"], "SKUs that need review")
    body = "".join(blocks)
    return f'<section id="review"><h2>Review queue</h2>{note}{body}</section>'


def human_review(review: dict | None) -> str:
    """Reviewed counts and the audit's measured precision of auto-acceptance (``engine.review``)."""
    if review is None:
        return (
            '<section id="human"><h2>Human review</h2><p class="note">Nobody has reviewed this output yet: '
            "<code>adloop review OUT</code> serves the review queue and an audit sample.</p></section>"
        )
    p = review["precision"]
    if p["judged"]:
        lo, hi = p["ci95"]
        precision = f"{fmt_pct(p['precision'])} (95% CI {fmt_pct(lo)} to {fmt_pct(hi)}, {p['judged']} judged)"
    else:
        precision = "n/a (no audited SKU yet)"
    rows = [
        ("queue_reviewed", "review queue SKUs reviewed", fmt_int(review["queue_reviewed"])),
        ("queue_accepted", "accepted by a reviewer", fmt_int(review["queue_accepted"])),
        ("queue_rejected", "every candidate rejected", fmt_int(review["queue_rejected"])),
        ("audit_reviewed", "audit SKUs reviewed", f"{review['audit_reviewed']:,} of {review['audit_size']:,}"),
        ("audit_precision", "measured precision of auto-acceptance", precision),
        ("decisions_logged", "decisions in the log (a later one on a SKU wins)", fmt_int(review["decisions_logged"])),
    ]
    body = "".join(f'<tr><th>{esc(name)}</th><td data-review="{key}">{esc(v)}</td></tr>' for key, name, v in rows)
    return (
        '<section id="human"><h2>Human review</h2><p class="note">From <code>review/</code>: decisions made in '
        "<code>adloop review</code>; human-decided rows carry <code>decided_by = review</code> in "
        f'<code>results/</code>.</p><table class="models">{body}</table></section>'
    )


def failures(scan: Scan) -> str:
    total = scan.status["failed"]
    reasons = "".join(
        f"<tr><td>{esc(reason)}</td><td class=num>{count:,}</td></tr>" for reason, count in scan.reasons.most_common()
    )
    rows = "".join(
        f"<tr><td><code>{esc(r['sku_id'])}</code></td><td>{esc((r['error'] or '')[:300])}</td>"
        f"<td><code>{esc(r['image_uri'] or '')}</code></td></tr>"
        for r in scan.failed
    )
    note = _shown(len(scan.failed), total, "failed SKUs").replace(
        "a fixed sample (the same SKUs on every rebuild)", "the first ids in sort order"
    )
    tables = ""
    if total:
        tables = (
            f'<table class="reasons"><tr><th>reason</th><th>SKUs</th></tr>{reasons}</table>'
            f'<table class="failed"><tr><th>SKU</th><th>error</th><th>input</th></tr>{rows}</table>'
        )
    return f'<section id="failed"><h2>Failed SKUs</h2>{note}{tables}</section>'


def render(out: str, summary: dict, scan: Scan, cfg: ReportConfig) -> str:
    """The whole page. ``out`` is the output root every link is relative to."""
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    charts = (
        '<section class="charts"><div><h2>Acceptance by attempt number</h2>'
        '<p class="note">Share of the candidates generated at each attempt that RFNet accepted.</p>'
        f"{acceptance_chart(scan)}</div><div><h2>Defects among rejected candidates</h2>"
        f'<p class="note">{sum(scan.defects.values()):,} rejected candidates by RFNet\'s most likely defect class.</p>'
        f"{defect_chart(scan)}</div></section>"
    )
    body = (
        headline(summary)
        + charts
        + gallery(out, scan, cfg)
        + review_queue(out, scan, cfg)
        + human_review(summary.get("review"))
        + failures(scan)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>adloop run report</title><style>{CSS}</style></head><body>"
        f'<header><h1>adloop run report</h1><p class="note">{esc(out)} &middot; built {generated} by '
        "<code>adloop report</code></p>"
        '<nav><a href="#accepted">accepted</a><a href="#review">review queue</a><a href="#human">human review</a><a href="#failed">failed</a></nav>'
        f"</header><main>{body}</main></body></html>\n"
    )


CSS = """
:root{--fg:#1d2329;--mut:#5f6b76;--bg:#f6f7f9;--card:#fff;--line:#dde2e7}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#16324f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header .note{color:#c9d6e3;margin:4px 0 0}header nav a{color:#fff;margin-right:16px;font-weight:600}
main{padding:8px 28px 40px;max-width:1400px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 6px}.note{color:var(--mut);margin:4px 0 10px}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(135px,1fr));gap:10px}
.kpi{border:1px solid var(--line);border-radius:6px;padding:10px 12px;border-top:4px solid #6b7c8c}
.kpi .v{font-size:24px;font-weight:700}.kpi .k{color:var(--mut)}
.kpi.good{border-top-color:#2f8f5b}.kpi.warn{border-top-color:#d59a1a}.kpi.bad{border-top-color:#c2553a}
table{border-collapse:collapse;margin:8px 0}th,td{text-align:left;padding:4px 10px;border-bottom:1px solid var(--line);vertical-align:top}
td.num{text-align:right}table.failed td{max-width:520px;overflow-wrap:anywhere}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:20px}
.chart{max-width:100%;height:auto;font-size:13px}.chart .track{fill:#eef1f4}.chart text{fill:var(--fg)}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.tile{margin:0;width:140px;font-size:12px}.tile img,.tile .missing{display:block;border-radius:4px;object-fit:contain;background:#eef1f4}
.tile figcaption{display:flex;flex-direction:column;overflow-wrap:anywhere}.tile figcaption span{color:var(--mut)}
.missing{display:flex;align-items:center;justify-content:center;color:var(--mut);border:1px dashed var(--line)}
.review{display:flex;gap:18px;padding:12px 0;border-top:1px solid var(--line)}
.review .cands{display:flex;flex-wrap:wrap;gap:10px}
.cand.kept img{outline:3px solid #d59a1a}.cand .defect{color:#c2553a}
img.cutout{background-color:#fff;background-image:linear-gradient(45deg,#e3e7eb 25%,transparent 25%,transparent 75%,#e3e7eb 75%),linear-gradient(45deg,#e3e7eb 25%,transparent 25%,transparent 75%,#e3e7eb 75%);background-size:16px 16px;background-position:0 0,8px 8px}
.more,.empty{color:var(--mut)}code{font-size:12px}
"""
