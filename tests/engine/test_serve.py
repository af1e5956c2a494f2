"""The online scorer, tested as a client sees it: the real Serve app on 127.0.0.1, real HTTP requests.

The app starts once for the module (a tiny RFNet, a bearer token, small limits so oversized inputs are cheap
to build). Every answer is checked against ``rfnet.Scorer.score`` on the same decoded inputs; every bad
request must get its 4xx, and the next good request must still succeed.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

import rfnet
from engine.conditioning import ConditioningConfig, decode_image, decode_product
from engine.serve import ServeArgs, _check_token, _normalise_uri, _uri_allowed, build_app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "engine" / "assets" / "samples"
TOKEN = "s3cret-token"
APP = "scorer-test"
LIMITS = {"max_body_bytes": 3_000_000, "max_image_bytes": 1_000_000, "max_pixels": 1_000_000, "max_items": 8}
COND = ConditioningConfig(max_pixels=LIMITS["max_pixels"], max_bytes=LIMITS["max_image_bytes"])


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _generated(seed: int, side: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    return _png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(scorer: rfnet.Scorer, items: list[tuple[bytes, bytes, str]]) -> rfnet.ScoreResult:
    product = np.stack([decode_product(p, "p", COND) for p, _, _ in items])
    generated = np.stack([decode_image(g, "g", COND)[..., :3] for _, g, _ in items])
    return scorer.score(product, generated, [c for _, _, c in items])


def _config(port: int, args: dict, user_config: dict):
    """``cluster/serve_config.yaml`` with this test's port, args and live settings."""
    from ray.serve.schema import ServeDeploySchema

    with open(ROOT / "cluster" / "serve_config.yaml") as f:
        raw = yaml.safe_load(f)
    raw["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = raw["applications"]
    app["name"] = APP
    app["args"] = {**app["args"], **args}
    app["deployments"][0]["user_config"] = {**app["deployments"][0]["user_config"], **user_config}
    return ServeDeploySchema.model_validate(raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve
    from ray.serve.context import _get_global_client

    from cluster.runtime import init_ray

    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "token").write_text(TOKEN + "\n")
    images = tmp / "images"
    images.mkdir()
    (images / "mug.png").write_bytes((SAMPLES / "mug-002.png").read_bytes())
    (images / "gen.png").write_bytes(_generated(0))
    (tmp / "secret.png").write_bytes(_generated(1))
    args = {
        "device": "cpu",
        "token_file": str(tmp / "token"),
        "allowed_uri_roots": [f"file://{images}"],
        "min_replicas": 1,
        "max_replicas": 1,
        "num_cpus": 0,  # do not compete with other tests' actors for the 2 CPUs
        **LIMITS,
    }
    live = {"checkpoint": "tiny", "threshold": None, "max_batch_size": 8, "batch_wait_timeout_s": 0.02}
    init_ray(num_cpus=2, num_gpus=0)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = _get_global_client()

    def deploy(**user_config) -> None:
        # What `serve deploy cluster/serve_config.yaml` asks the controller to do.
        client.deploy_apps(_config(port, args, {**live, **user_config}), _blocking=True)

    deploy()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("the scorer app never became ready")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield {"url": url, "deploy": deploy, "http": session, "tmp": tmp, "images": images}
    serve.delete(APP)
    serve.shutdown()


@pytest.fixture(scope="module")
def scorer():
    return rfnet.Scorer("tiny", device="cpu")


def _good(server) -> tuple[dict, tuple[bytes, bytes, str]]:
    product, generated, caption = (SAMPLES / "mug-002.png").read_bytes(), _generated(0), "a white ceramic mug"
    return {"generated": _b64(generated), "product": _b64(product), "caption": caption}, (product, generated, caption)


def _assert_matches(answer: dict, expected: rfnet.ScoreResult, row: int, threshold: float = 0.5) -> None:
    np.testing.assert_allclose(answer["p_available"], expected.p_available[row], rtol=0, atol=1e-5)
    probs = [answer["probabilities"][label] for label in rfnet.LABELS]
    np.testing.assert_allclose(probs, expected.probabilities[row], rtol=0, atol=1e-5)
    assert answer["defect"] == expected.defect[row]
    assert answer["accepted"] == bool(answer["p_available"] >= threshold)
    assert answer["threshold"] == threshold


def _post_good(server) -> dict:
    body, _ = _good(server)
    r = server["http"].post(f"{server['url']}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_readiness(server):
    r = requests.get(f"{server['url']}/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = requests.get(f"{server['url']}/readyz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ready", "model": "tiny", "threshold": 0.5}


def test_answers_equal_the_batch_scorer(server, scorer):
    # Different products and image sizes: each request is one row of the batch scorer's output.
    items = [
        ((SAMPLES / name).read_bytes(), _generated(seed, side), caption)
        for name, seed, side, caption in [
            ("mug-002.png", 0, 96, "a white ceramic mug"),
            ("box-007.jpg", 1, 64, "a cardboard gift box"),
            ("lamp-003.png", 2, 128, ""),
        ]
    ]
    for product, generated, caption in items:
        body = {"generated": _b64(generated), "product": _b64(product), "caption": caption}
        r = server["http"].post(f"{server['url']}/v1/score", json=body, timeout=60)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "tiny"
        _assert_matches(answer, _expected(scorer, [(product, generated, caption)]), 0)


def test_batch_endpoint_and_concurrent_clients_equal_the_batch_scorer(server, scorer):
    items = [((SAMPLES / "mug-002.png").read_bytes(), _generated(s), f"mug number {s}") for s in range(6)]
    expected = _expected(scorer, items)
    body = {"items": [{"generated": _b64(g), "product": _b64(p), "caption": c} for p, g, c in items]}
    r = server["http"].post(f"{server['url']}/v1/score:batch", json=body, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(items)
    for i, answer in enumerate(results):
        _assert_matches(answer, expected, i)

    # The same items from six concurrent clients: merged into shared batches, each still gets its own row.
    answers: dict[int, dict] = {}

    def client(i: int) -> None:
        p, g, c = items[i]
        answers[i] = requests.post(
            f"{server['url']}/v1/score",
            json={"generated": _b64(g), "product": _b64(p), "caption": c},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        ).json()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(items)):
        _assert_matches(answers[i], expected, i)


def test_images_by_uri_inside_the_allowed_root(server, scorer):
    images = server["images"]
    body = {
        "generated": {"uri": f"file://{images}/gen.png"},
        "product": {"uri": str(images / "mug.png")},
        "caption": "a white ceramic mug",
    }
    r = server["http"].post(f"{server['url']}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    _, good = _good(server)
    _assert_matches(r.json(), _expected(scorer, [good]), 0)


def _bad_cases(server) -> list[tuple[str, dict, int, str]]:
    """(name, requests.post kwargs, expected status, expected reason)."""
    good, (product, generated, caption) = _good(server)
    images, tmp = server["images"], server["tmp"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    transparent = _png(np.zeros((32, 32, 4), np.uint8))
    huge = _png(np.zeros((1001, 1000, 3), np.uint8))  # 1.001 MP > max_pixels, but a small file
    big_file = np.random.default_rng(0).integers(0, 256, 1_100_000, dtype=np.uint8).tobytes()

    def with_(**changes) -> dict:
        return {"json": {**good, **changes}, "headers": auth}

    def uri(u: str) -> dict:
        return with_(generated={"uri": u})

    def chunks(n: int):
        for _ in range(n):
            yield b" " * 65536

    return [
        ("no token", {"json": good}, 401, "missing_token"),
        ("bad token", {"json": good, "headers": {"Authorization": "Bearer nope"}}, 401, "bad_token"),
        ("wrong scheme", {"json": good, "headers": {"Authorization": f"Basic {TOKEN}"}}, 401, "bad_token"),
        ("body too large", {"data": b" " * 3_100_000, "headers": auth}, 413, "body_too_large"),
        ("chunked body too large", {"data": chunks(50), "headers": auth}, 413, "body_too_large"),
        ("too many pixels", with_(generated=_b64(huge)), 413, "too_many_pixels"),
        ("image bytes too large", with_(product=_b64(big_file)), 413, "file_too_large"),
        ("malformed json", {"data": b'{"generated": ', "headers": auth}, 400, "malformed_json"),
        ("not utf-8", {"data": b"\xff\xfe{}", "headers": auth}, 400, "malformed_json"),
        ("deeply nested json", {"data": b"[" * 200_000 + b"]" * 200_000, "headers": auth}, 400, "malformed_json"),
        ("json array", {"json": [1, 2], "headers": auth}, 422, "invalid_request"),
        ("missing caption", with_(caption=None), 422, "invalid_request"),
        (
            "missing product",
            {"json": {"generated": good["generated"], "caption": caption}, "headers": auth},
            422,
            "invalid_request",
        ),
        ("caption not a string", with_(caption=5), 422, "invalid_request"),
        ("unknown field", with_(extra=1), 422, "invalid_request"),
        (
            "both b64 and uri",
            with_(generated={"b64": "AAAA", "uri": f"file://{images}/gen.png"}),
            422,
            "invalid_request",
        ),
        ("non-image bytes", with_(generated=_b64(b"hello, this is not an image")), 422, "undecodable"),
        ("empty image", with_(generated={"b64": ""}), 422, "empty_file"),
        ("bad base64", with_(generated={"b64": "###not base64###"}), 400, "bad_base64"),
        ("no product pixels", with_(product=_b64(transparent)), 422, "no_product_pixels"),
        ("uri outside roots", uri("file:///etc/passwd"), 422, "uri_not_allowed"),
        ("uri dot-dot escape", uri(f"file://{images}/../secret.png"), 422, "uri_not_allowed"),
        ("plain path outside roots", uri(str(tmp / "secret.png")), 422, "uri_not_allowed"),
        ("sibling prefix", uri(f"file://{images}-evil/gen.png"), 422, "uri_not_allowed"),
        ("http scheme", uri("http://127.0.0.1:9/gen.png"), 422, "uri_not_allowed"),
        ("chained uri", uri(f"simplecache::file://{images}/gen.png"), 422, "uri_not_allowed"),
        ("missing file in root", uri(f"file://{images}/nope.png"), 422, "uri_unreadable"),
        ("empty batch", {"json": {"items": []}, "headers": auth, "path": "/v1/score:batch"}, 422, "empty_batch"),
        (
            "too many items",
            {"json": {"items": [good] * 9}, "headers": auth, "path": "/v1/score:batch"},
            413,
            "too_many_items",
        ),
        (
            "one bad item in a batch",
            {
                "json": {"items": [good, {**good, "product": {"b64": "!!"}}]},
                "headers": auth,
                "path": "/v1/score:batch",
            },
            400,
            "bad_base64",
        ),
    ]


BAD_NAMES = [case[0] for case in _bad_cases({"images": Path("/x"), "tmp": Path("/x")})]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_request_gets_its_4xx_and_the_service_keeps_answering(server, name):
    case = {c[0]: c for c in _bad_cases(server)}[name]
    _, kwargs, status, reason = case
    kwargs = dict(kwargs)
    path = kwargs.pop("path", "/v1/score")
    r = requests.post(f"{server['url']}{path}", timeout=60, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text[:500])
    error = r.json()["error"]
    assert error["reason"] == reason, error
    assert len(r.text) < 20_000  # a reason, not an echo of the input
    if status == 401:
        assert r.headers.get("WWW-Authenticate") == "Bearer"
    assert _post_good(server)["model"] == "tiny"


def test_reconfigure_threshold_and_checkpoint_without_restart(server, scorer, tmp_path):
    replica = requests.get(f"{server['url']}/healthz", timeout=10).json()["replica"]
    p = _post_good(server)["p_available"]

    # Good requests keep flowing from another client while the app is reconfigured under it.
    stop, failures, served = threading.Event(), [], [0]

    def background() -> None:
        body, _ = _good(server)
        while not stop.is_set():
            r = server["http"].post(f"{server['url']}/v1/score", json=body, timeout=60)
            if r.status_code != 200:
                failures.append(r.status_code)
            served[0] += 1
            time.sleep(0.1)  # steady traffic, without starving the 2 CPUs the reload needs

    redeploy = server["deploy"]  # a new user_config for the running app, as `serve deploy` sends it

    def wait_for(predicate) -> dict:
        deadline = time.time() + 60
        while time.time() < deadline:
            answer = _post_good(server)
            if predicate(answer):
                return answer
            time.sleep(0.2)
        raise AssertionError("the new config never took effect")

    t = threading.Thread(target=background)
    t.start()
    try:
        redeploy(threshold=0.0)
        assert wait_for(lambda a: a["threshold"] == 0.0)["accepted"] is True
        redeploy(threshold=1.0)
        answer = wait_for(lambda a: a["threshold"] == 1.0)
        assert answer["accepted"] is False and answer["p_available"] == pytest.approx(p, abs=1e-6)

        # A live update naming a missing checkpoint is refused; the replica keeps its model and says why.
        redeploy(checkpoint=str(tmp_path / "no-such-checkpoint"), threshold=0.25)
        deadline = time.time() + 60
        while "config_error" not in (ready := requests.get(f"{server['url']}/readyz", timeout=10).json()):
            assert time.time() < deadline, ready
            time.sleep(0.2)
        assert ready["model"] == "tiny" and ready["threshold"] == 1.0 and "no-such-checkpoint" in ready["config_error"]
        assert _post_good(server)["threshold"] == 1.0

        # A new checkpoint (other weights, its own stored threshold) replaces the model in place.
        model, _ = rfnet.build(rfnet.preset("tiny"), seed=1)
        folder = str(tmp_path / "rfnet-seed1")
        rfnet.save(model, folder, threshold=0.3)
        redeploy(checkpoint=folder, threshold=None)
        answer = wait_for(lambda a: a["model"] != "tiny")
        _, good = _good(server)
        _assert_matches(answer, _expected(rfnet.Scorer(folder, device="cpu"), [good]), 0, threshold=0.3)
        assert answer["model"].startswith("rfnet-seed1-")
    finally:
        redeploy()  # back to the module's config for any later test
        wait_for(lambda a: a["model"] == "tiny" and a["threshold"] == 0.5)
        stop.set()
        t.join()
    assert not failures, failures
    assert served[0] > 0
    assert requests.get(f"{server['url']}/healthz", timeout=10).json()["replica"] == replica


def test_token_check_and_uri_roots_units():
    import hashlib

    _check_token(None, None)  # no token configured: open
    digest = hashlib.sha256(b"t").digest()
    _check_token("Bearer t", digest)
    _check_token("bearer  t", digest)
    for header in (None, "", "Bearer", "Bearer u", "Token t", "Bearer t t"):
        with pytest.raises(Exception) as err:
            _check_token(header, digest)
        assert err.value.status == 401
    roots = [_normalise_uri("s3://bucket/ads"), _normalise_uri("/data/ads/")]
    assert _uri_allowed("s3://bucket/ads/x.png", roots)
    assert _uri_allowed("file:///data/ads/a/b.png", roots)
    assert not _uri_allowed("s3://bucket/ads/../other/x.png", roots)
    assert not _uri_allowed("s3://bucket/adsx/x.png", roots)
    assert not _uri_allowed("gs://bucket/ads/x.png", roots)
    assert not _uri_allowed("/data/ads/../../etc/passwd", roots)


def test_app_builder_takes_strings_like_serve_run():
    args = ServeArgs.model_validate(
        {"checkpoint": "tiny", "threshold": "0.7", "allowed_uri_roots": "file:///a,s3://b/c", "max_replicas": "3"}
    )
    assert args.threshold == 0.7 and args.allowed_uri_roots == ["file:///a", "s3://b/c"] and args.max_replicas == 3
    with pytest.raises(ValueError):
        ServeArgs.model_validate({"threshold": "1.5"})
    # What `serve run engine.serve:build_app threshold=0.6 max_replicas=2` does with its key=value strings.
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    app = call_user_app_builder_with_args_if_necessary(build_app, {"threshold": "0.6", "max_replicas": "2"})
    config = app._bound_deployment._deployment_config
    assert config.user_config["threshold"] == 0.6 and config.autoscaling_config.max_replicas == 2
    with pytest.raises(ValueError):
        ServeArgs.model_validate({"min_replicas": 3, "max_replicas": 2})


def test_serve_config_file_builds_the_app():
    from ray.serve.schema import ServeDeploySchema

    with open(ROOT / "cluster" / "serve_config.yaml") as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    (app,) = config.applications
    assert app.import_path == "engine.serve:build_app"
    args = ServeArgs.model_validate(app.args)
    (deployment,) = app.deployments
    # The config's user_config must name every live setting: Serve replaces user_config whole.
    assert set(deployment.user_config) == set(args.settings().model_dump())
    build_app(args)


def test_adloop_serve_command_line_maps_onto_the_app_args():
    from jobs.cli import COMMANDS
    from jobs.serve import parse_args, serve_args

    assert COMMANDS["serve"][0] == "jobs.serve"
    ns = parse_args(["--rfnet", "tiny", "--port", "8123", "--token-file", "t", "--allow-uri-root", "s3://b/ads"])
    args = ServeArgs.model_validate(serve_args(ns))
    assert (args.checkpoint, args.token_file, args.allowed_uri_roots) == ("tiny", "t", ["s3://b/ads"])
    assert ns.host == "127.0.0.1" and ns.port == 8123


def test_an_input_the_model_fails_on_fails_only_its_own_request():
    from engine.serve import ApiError, _Item, _Model, _run_model

    class Fragile:
        """Scores like the tiny RFNet, but raises on any batch containing the caption 'boom'."""

        model_id = "fragile"

        def __init__(self) -> None:
            self.inner = rfnet.Scorer("tiny", device="cpu")

        def score(self, product, generated, captions):
            if "boom" in captions:
                raise RuntimeError("cannot score this one")
            return self.inner.score(product, generated, captions)

    fragile = Fragile()
    rng = np.random.default_rng(0)
    product = decode_product((SAMPLES / "mug-002.png").read_bytes(), "p", COND)
    items = [_Item(product, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), c) for c in ("a", "boom", "c")]
    out = _run_model(_Model(fragile, 0.5, ("x", "tiny", "tiny")), items)
    assert isinstance(out[1], ApiError) and out[1].status == 422 and out[1].reason == "unscorable"
    expected = fragile.inner.score(
        np.stack([product] * 2), np.stack([items[0].generated, items[2].generated]), ["a", "c"]
    )
    for row, i in enumerate((0, 2)):
        _assert_matches(out[i], expected, row)
