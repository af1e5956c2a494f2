"""The review page's web app: FastAPI over a ``ReviewSession``, plain HTML/CSS/JS from engine/assets/.

Routes (all GET but the decision):

    /                          the page (engine/assets/review.html)
    /static/review.js|css      its script and style
    /api/state                 labels, progress per queue, audit precision
    /api/items?queue=Q         every SKU of queue Q with its candidates and latest decision
    /img/Q/<index>/<id>        a candidate image (id a01, a02, ...) or the product cutout (id product)
    POST /api/decisions        one decision (see ``ReviewSession.decide``)

There is no route that takes a path: images are named by opaque indices into the session, whose files
come from the output's manifests and must lie under OUT. Bad input gets a 4xx JSON ``{"error", "detail"}``
and the server keeps serving. With a token file, every route but the page itself wants the token, as a
bearer header or (so that ``<img>`` tags work) the ``adloop_review_token`` cookie the page sets.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from engine.review import QUEUES, ReviewError, ReviewSession
from rfnet.config import LABELS

logger = logging.getLogger(__name__)

COOKIE = "adloop_review_token"
MAX_BODY_BYTES = 64 * 1024
_STATIC = {"review.js": "text/javascript", "review.css": "text/css"}


def _asset(name: str) -> bytes:
    return resources.files("engine").joinpath("assets", name).read_bytes()


def _token_digest(token_file: str | None) -> bytes | None:
    if token_file is None:
        return None
    with open(token_file, "rb") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"token file {token_file!r} is empty")
    return hashlib.sha256(token).digest()


def _check_token(request: Request, digest: bytes | None) -> None:
    if digest is None:
        return
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.cookies.get(COOKIE, "")
    if not given:
        raise ReviewError(
            401, "missing_token", "send 'Authorization: Bearer <token>' (or open the page as /#token=...)"
        )
    # Fixed-length digests compared in constant time, as the scorer does: nothing leaks through timing.
    if not hmac.compare_digest(hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest(), digest):
        raise ReviewError(401, "bad_token", "the bearer token is wrong")


def create_app(
    session: ReviewSession, token_file: str | None = None, on_shutdown: Callable[[], object] | None = None
) -> FastAPI:
    """The review app over ``session``.

    Args:
        session: the output's review session (its queues are read once, when it was made).
        token_file: a file holding the token clients must send; None leaves the app open.
        on_shutdown: called when the server stops gracefully (uvicorn re-raises SIGTERM/SIGINT once it has
            shut down, so code after ``uvicorn.run`` would never run).
    """
    digest = _token_digest(token_file)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if on_shutdown is not None:
            try:
                on_shutdown()
            except Exception:  # the decisions are on disk already; a failed extra costs a log line
                logger.exception("shutdown hook failed")

    app = FastAPI(title="adloop review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    page, static = _asset("review.html"), {name: _asset(name) for name in _STATIC}

    @app.exception_handler(ReviewError)
    async def review_error(_: Request, err: ReviewError) -> JSONResponse:
        return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status)

    @app.exception_handler(404)
    async def not_found(_: Request, __) -> JSONResponse:
        return JSONResponse({"error": "not_found", "detail": "no such page"}, status_code=404)

    @app.get("/")
    def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def asset(name: str) -> Response:
        if name not in static:
            raise ReviewError(404, "not_found", "no such file")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-store"})

    @app.get("/api/state")
    def state(request: Request) -> dict:
        _check_token(request, digest)
        return {"labels": list(LABELS), "queues": list(QUEUES), "progress": session.progress(), "out": session.out}

    @app.get("/api/items")
    def items(request: Request, queue: str = "review") -> dict:
        _check_token(request, digest)
        return {"queue": queue, "items": session.items(queue)}

    @app.get("/img/{queue}/{index}/{which}")
    def image(request: Request, queue: str, index: str, which: str) -> FileResponse:
        _check_token(request, digest)
        if not index.isdigit():
            raise ReviewError(404, "unknown_sku", f"no SKU #{index[:40]!r}")
        path, media = session.image_file(queue, int(index), which)
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/decisions")
    async def decide(request: Request) -> dict:
        _check_token(request, digest)
        length = request.headers.get("content-length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise ReviewError(413, "body_too_large", f"Content-Length {length[:20]!r} > {MAX_BODY_BYTES}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ReviewError(413, "body_too_large", f"{len(body)} bytes > {MAX_BODY_BYTES}")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ReviewError(400, "bad_json", "the body is not JSON") from None
        # The session's writes are blocking file I/O; keep them off the event loop.
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(session.decide, payload)

    return app
