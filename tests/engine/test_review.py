"""``adloop review``: the human loop on a real (tiny) refresh output, through the API and in a real browser.

The browser test drives Debian's Chromium with Selenium (Debian's chromedriver; nothing is downloaded):
it reviews queue and audit SKUs with the keyboard, reloads, survives a killed server, and then the labels
on disk, the final rows, the report and a train-rfnet step on the export are checked.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from engine.outputs import RESULT_SCHEMA, complete_parts
from engine.review import ReviewConfig, ReviewError, ReviewSession, audit_precision, wilson_interval
from engine.review_app import create_app
from engine.samples import SAMPLES, SAMPLES_DIR
from jobs import refresh, review

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--size", "32", "--steps", "2", "--no-progress", "--num-cpus", "2"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One refresh of the 7 samples twice over under a scorer that accepts 30% of candidates, 2 attempts:
    8 SKUs accepted and 6 left for review (the scorer's verdicts are a fixed function of the seeds)."""
    tmp = tmp_path_factory.mktemp("review")
    lines = []
    for copy in range(2):
        for sku, (caption, _) in SAMPLES.items():
            uri = str(next(SAMPLES_DIR.glob(f"{sku}.*")))
            lines.append({"sku_id": sku if copy == 0 else f"{sku}-copy{copy}", "image_uri": uri, "caption": caption})
    manifest = tmp / "skus.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp / "out"
    args = ["--input", str(manifest), "--output", str(out), "--rfnet", "fixed-rate:0.3", "--max-attempts", "2"]
    assert refresh.main(args + FAST) == 0
    status = json.loads((out / "summary.json").read_text())["status"]
    assert status["needs_review"] >= 3 and status["accepted"] >= 2, status
    return out


def _copy(made: Path, tmp: Path) -> Path:
    out = tmp / "out"
    # The manifests' image paths are relative to the output folder, so a copy reviews its own files.
    shutil.copytree(made, out)
    return out


def _results(out: Path) -> dict[str, dict]:
    rows = pads.dataset(complete_parts(str(out / "results")), schema=RESULT_SCHEMA).to_table().to_pylist()
    by_id = {r["sku_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a SKU has more than one final row"
    return by_id


# ---- the API ---------------------------------------------------------------------------------------------------


def test_bad_input_gets_a_4xx_with_a_reason_and_the_server_keeps_serving(made, tmp_path):
    out = _copy(made, tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    client = TestClient(create_app(ReviewSession(str(out), ReviewConfig(audit=3)), str(token)))
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/").status_code == 200  # the page itself holds nothing; its data wants the token
    assert client.get("/api/state").json()["error"] == "missing_token"
    assert client.get("/api/state", headers={"Authorization": "Bearer nope"}).status_code == 401
    client.cookies.set("adloop_review_token", "s3cret")  # what the page sets, so that <img> requests work
    state = client.get("/api/state").json()
    client.cookies.clear()
    assert state["progress"]["review"] == {"total": 6, "reviewed": 0} and state["progress"]["audit"]["total"] == 3
    item = client.get("/api/items?queue=review", headers=auth).json()["items"][0]
    sku, cands = item["sku_id"], [c["id"] for c in item["candidates"]]

    def post(body, raw=None):
        return client.post("/api/decisions", headers=auth, content=raw if raw is not None else json.dumps(body))

    bad = [
        ({"sku_id": "no-such-sku", "queue": "review", "accept": cands[0]}, 404, "unknown_sku"),
        ({"sku_id": sku, "queue": "audit", "accept": cands[0]}, 404, "unknown_sku"),  # not in that queue
        ({"sku_id": sku, "queue": "elsewhere", "accept": cands[0]}, 404, "unknown_queue"),
        ({"sku_id": sku, "queue": "review", "accept": "a99"}, 404, "unknown_candidate"),
        ({"sku_id": sku, "queue": "review", "labels": {"../../x": "Available"}}, 404, "unknown_candidate"),
        ({"sku_id": sku, "queue": "review", "labels": dict.fromkeys(cands, "Lovely")}, 422, "unknown_label"),
        ({"sku_id": sku, "queue": "review", "labels": {cands[0]: "Unsuitable"}}, 422, "incomplete"),
        ({"sku_id": sku, "queue": "review", "accept": cands[0], "labels": {cands[0]: "Unsuitable"}}, 422, "conflict"),
        (["not", "an", "object"], 422, "bad_body"),
    ]
    for body, status, code in bad:
        r = post(body)
        assert (r.status_code, r.json()["error"]) == (status, code), (body, r.text)
    assert post(None, raw=b"{not json").status_code == 400
    assert post(None, raw=b"x" * 70_000).status_code == 413
    # path traversal: there is no route that takes a path; image ids are checked against the manifests
    for path in ("/img/review/0/..%2F..%2F..%2Fetc%2Fpasswd", "/img/review/0/%2e%2e", "/static/..%2Freview.py",
                 "/static/review.html", "/img/review/-1/a01", "/img/review/99/a01", "/img/../../etc/passwd",
                 "/img/review/0/a99", "/img/nowhere/0/a01"):  # fmt: skip
        r = client.get(path, headers=auth)
        assert r.status_code in (403, 404) and "error" in r.json(), (path, r.status_code)
    assert client.get(item["candidates"][0]["image"], headers=auth).status_code == 200

    # A second decision on the same SKU: the later one wins, both stay in the log.
    first = post({"sku_id": sku, "queue": "review", "accept": cands[-1]}).json()
    assert first["progress"]["review"]["reviewed"] == 1 and _results(out)[sku]["status"] == "accepted"
    second = post({"sku_id": sku, "queue": "review", "labels": dict.fromkeys(cands, "Size Mismatch")})
    assert second.status_code == 200 and second.json()["progress"]["review"]["reviewed"] == 1
    log = sorted((out / "review" / "decisions").glob("*.json"))
    assert [json.loads(p.read_text())["accept"] for p in log] == [cands[-1], None]
    row = _results(out)[sku]
    assert (row["status"], row["decided_by"], row["defect"]) == ("needs_review", "review", "Size Mismatch")
    assert len(_results(out)) == 14

    # A folder that is not a refresh output is refused with its reason, by the library and the job.
    with pytest.raises(ReviewError) as err:
        ReviewSession(str(tmp_path / "empty"))
    assert err.value.status == 400 and err.value.code == "not_a_refresh_output"
    assert review.main([str(tmp_path / "empty")]) == 2
    assert review.main(["export", str(tmp_path / "empty"), "--to", str(tmp_path / "x")]) == 2


def test_precision_and_its_interval_are_exact():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(9, 10)
    assert abs(lo - 0.5958) < 1e-3 and abs(hi - 0.9821) < 1e-3  # the textbook Wilson values
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0
    decisions = {
        "a": {"queue": "audit", "labels": {"a01": "Available"}},
        "b": {"queue": "audit", "labels": {"a02": "Unsuitable", "a01": "Available"}},
        "c": {"queue": "audit", "labels": {"a03": "Available"}},  # RFNet's pick is unlabelled: not judged
    }
    p = audit_precision({"a": "a01", "b": "a02", "c": "a01"}, decisions)
    assert (p["judged"], p["correct"], p["precision"]) == (2, 1, 0.5)


# ---- the browser -----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(out: Path, port: int, token_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "jobs.cli", "review", str(out), "--port", str(port), "--token-file", str(token_file)]
    proc = subprocess.Popen(
        [*cmd, "--audit", "2"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 240  # a loaded CI machine: importing pyarrow, PIL and FastAPI can take a while
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the review server did not start")


def _browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "Debian's chromium and chromium-driver are missing: `make test` installs them"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def _wait_progress(driver, queue: str, reviewed: int, total: int | None = None) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        el = d.find_element("id", "progress")
        return el.get_attribute("data-queue") == queue and el.get_attribute("data-reviewed") == str(reviewed)

    WebDriverWait(driver, 90).until(shown)
    text = driver.find_element("id", "progress").text
    assert text == f"{reviewed} of {total} reviewed" if total is not None else text.startswith(f"{reviewed} of ")


def _on_sku(driver) -> str:
    return driver.find_element("id", "sku").get_attribute("data-sku")


def _focused(driver) -> str:
    return driver.find_element("css selector", ".cand.focus").get_attribute("data-cand")


def test_a_reviewer_goes_through_the_whole_loop_in_a_browser(made, tmp_path):
    from selenium.webdriver.common.keys import Keys

    out = _copy(made, tmp_path)
    before = _results(out)
    token = tmp_path / "token"
    token.write_text("browser-token")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = _serve(out, port, token)
    driver = _browser(tmp_path / "profile")
    done: dict[str, dict] = {}
    try:
        driver.get(url + "#token=browser-token")
        _wait_progress(driver, "review", 0, 6)
        assert "token" not in driver.current_url  # it went into a cookie, out of the address bar

        # queue SKU 1: accept the focused candidate (the one RFNet liked best)
        sku = _on_sku(driver)
        done[sku] = {"accept": _focused(driver)}
        _press(driver, "a")
        _wait_progress(driver, "review", 1, 6)
        # queue SKU 2: label each candidate with a defect (2 = Unsuitable on the focused one, then 5s)
        sku = _on_sku(driver)
        assert sku not in done
        n = len(driver.find_elements("css selector", "#candidates .cand"))
        done[sku] = {"labels": {_focused(driver): "Unsuitable"}}
        _press(driver, "2", *["5"] * (n - 1))
        _wait_progress(driver, "review", 2, 6)
        # queue SKU 3: move to the next candidate and accept it with Enter
        sku = _on_sku(driver)
        _press(driver, Keys.ARROW_RIGHT)
        done[sku] = {"accept": _focused(driver)}
        _press(driver, Keys.ENTER)
        _wait_progress(driver, "review", 3, 6)

        # the audit: RFNet's pick is focused; accept one, call the other's pick a defect
        _press(driver, "u")
        _wait_progress(driver, "audit", 0, 2)
        audit = [_on_sku(driver)]
        done[audit[0]] = {"accept": _focused(driver)}
        _press(driver, "a")
        _wait_progress(driver, "audit", 1, 2)
        audit.append(_on_sku(driver))
        n = len(driver.find_elements("css selector", "#candidates .cand"))
        done[audit[1]] = {"labels": {_focused(driver): "Space Mismatch"}}
        _press(driver, "3", *["6"] * (n - 1))
        _wait_progress(driver, "audit", 2, 2)
        assert "audit precision 50.0%" in driver.find_element("id", "precision").text

        # reload: the progress is kept (the page reopens where the reviewer was: the audit)
        driver.refresh()
        _wait_progress(driver, "audit", 2, 2)
        # a killed server loses nothing either
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        server = _serve(out, port, token)
        driver.refresh()
        _wait_progress(driver, "audit", 2, 2)
        _press(driver, "q")
        _wait_progress(driver, "review", 3, 6)
        assert _on_sku(driver) not in done  # it resumes at the first SKU without a decision
        shot = tmp_path / "review.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("ADLOOP_REVIEW_SCREENSHOT"):
            shutil.copy(shot, os.environ["ADLOOP_REVIEW_SCREENSHOT"])
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the page rendered (nearly) blank"
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)  # a clean stop also rebuilds the report
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    # the labels on disk: one decision per reviewed SKU, each a whole JSON file
    log = [json.loads(p.read_text()) for p in sorted((out / "review" / "decisions").glob("*.json"))]
    assert sorted(d["sku_id"] for d in log) == sorted(done)
    for d in log:
        want = done[d["sku_id"]]
        assert d["queue"] == ("audit" if d["sku_id"] in audit else "review")
        if "accept" in want:
            assert d["accept"] == want["accept"] and d["labels"][want["accept"]] == "Available"
        else:
            assert d["accept"] is None and all(v != "Available" for v in d["labels"].values())
            (cid, label), = want["labels"].items()  # fmt: skip
            assert d["labels"][cid] == label

    # the final rows: still one per SKU; human decisions say so, the rest are the refresh's
    rows = _results(out)
    original = before
    assert len(rows) == len(original) == 14
    candidates = pq.read_table(complete_parts(str(out / "candidates"))).to_pylist()
    for sku, row in rows.items():
        if sku not in done:
            assert row == original[sku]
            continue
        assert row["decided_by"] == "review"
        if "accept" in done[sku]:
            attempt = int(done[sku]["accept"][1:])
            cand = next(c for c in candidates if c["sku_id"] == sku and c["attempt"] == attempt)
            assert (row["status"], row["attempts"], row["seed"]) == ("accepted", attempt, cand["seed"])
            assert (out / row["image_path"]).read_bytes() == (out / cand["image_path"]).read_bytes()
        else:
            assert row["status"] == "needs_review"
    assert original[audit[1]]["status"] == "accepted"  # an audited SKU a person rejected no longer ships

    # the report (rebuilt when the server stopped) shows the reviewed counts and the audit precision
    page = (out / "report.html").read_text()
    assert 'data-review="queue_reviewed">3<' in page and 'data-review="audit_reviewed">2 of 2<' in page
    assert 'data-review="audit_precision">50.0% (95% CI 9.5% to 90.5%, 2 judged)<' in page
    assert f'data-key="accepted"><div class="v">{sum(r["status"] == "accepted" for r in rows.values())}<' in page

    # review export -> an RF1M set that train-rfnet trains on, merged with another set, fine-tuning a checkpoint
    from jobs import synth, train_rfnet
    from rfnet.checkpoint import build, save
    from rfnet.config import preset
    from rfnet.data import read_dataset

    export = tmp_path / "labels"
    assert review.main(["export", str(out), "--to", str(export)]) == 0
    examples = read_dataset(str(export))
    want_labels = sorted(
        label for d in log for label in (d["labels"] | ({d["accept"]: "Available"} if d["accept"] else {})).values()
    )
    from rfnet.config import LABELS

    assert sorted(LABELS[e.label] for e in examples) == want_labels
    assert all(e.depth and e.saliency for e in examples) and len({e.product_id for e in examples}) == 5
    synth_args = ["--n", "64", "--images-per-product", "1", "--size", "32"]  # 64 products: no split is empty
    assert synth.main(["rf1m", *synth_args, "--out", str(tmp_path / "synth")]) == 0
    start = tmp_path / "start"
    save(build(preset("tiny").replace(image_size=32))[0], str(start), threshold=0.5)
    args = ["--data", str(export), "--data", str(tmp_path / "synth"), "--out", str(tmp_path / "tuned"),
            "--init-from", str(start), "--workers", "1", "--epochs", "1", "--batch-size", "4",
            "--max-steps-per-epoch", "1"]  # fmt: skip
    assert train_rfnet.main(args) == 0
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert sum(metrics["split_sizes"].values()) == len(examples) + 64
    assert os.path.isfile(tmp_path / "tuned" / "rfnet" / "model.safetensors")
    assert glob.glob(str(tmp_path / "tuned" / "ray" / "rfnet" / "checkpoint_*"))
