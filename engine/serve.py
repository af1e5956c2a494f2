"""The online scorer: RFNet behind Ray Serve, over HTTP/JSON (docs/design.md, "Online scorer").

One deployment wraps the same ``rfnet.Scorer`` the batch job uses. Requests from different clients are
merged into one model call with ``@serve.batch``; the threshold, the checkpoint and the batching knobs sit
in ``user_config`` and are applied in ``reconfigure`` (a new checkpoint is loaded beside the old one and
swapped in, so requests keep being answered while it loads). Run it with::

    adloop serve --rfnet tiny --port 8000                        # jobs/serve.py
    serve run engine.serve:build_app checkpoint=tiny threshold=0.6
    serve run cluster/serve_config.yaml                          # or: serve deploy cluster/serve_config.yaml

HTTP API (JSON; images are ``{"b64": "..."}`` or ``{"uri": "..."}``, a URI only under ``allowed_uri_roots``)::

    POST /v1/score        {"generated": IMG, "product": IMG, "caption": str}
                          -> {"p_available", "defect", "probabilities": {label: p}, "accepted", "threshold", "model"}
    POST /v1/score:batch  {"items": [request, ...]} -> {"results": [answer, ...]}
    GET  /healthz         200 while the replica runs
    GET  /readyz          200 once the model is loaded, else 503

Bad requests get ``{"error": {"reason", "detail", ...}}`` with 400 (malformed JSON, bad base64), 401
(missing/wrong bearer token), 413 (body, image bytes or pixel count over a limit) or 422 (missing or
mistyped fields, undecodable images, URIs outside the allowed roots); none of them reaches the model.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (``Request``) at runtime.
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve
from ray.serve import Application

from engine.conditioning import ConditioningConfig, ProductImageError, decode_image, decode_product
from engine.config import ScorerConfig
from rfnet import LABELS, Scorer
from rfnet.config import DEFAULT_PRESET

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "RFNetScorer"


# ----------------------------------------------------------------------------------------------------------
# Configuration: what the app builder accepts, and the part of it that can change on a running app.


class ScorerSettings(BaseModel):
    """The live part of the config: the deployment's ``user_config``, applied in ``reconfigure``."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = DEFAULT_PRESET
    """RFNet checkpoint folder, or the ``tiny`` / ``paper`` random-weight presets."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Accept when P(Available) >= threshold; ``None`` takes the checkpoint's."""
    depth: str = ScorerConfig.depth
    """Depth model: ``tiny`` / ``paper`` / a transformers depth-estimation folder."""
    saliency: str = ScorerConfig.saliency
    """Saliency model: ``tiny`` / ``paper`` / ``toy`` / U^2-Net's ``u2net.pth`` or ``u2netp.pth`` / a saliency folder."""
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    """Most requests merged into one model call, per replica."""
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=10.0)
    """How long a partial batch waits for more requests (seconds)."""


class Limits(BaseModel):
    """Per-request limits; anything above them is refused with 413 before it reaches the model."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest HTTP body accepted (bytes, after any transfer encoding)."""
    max_image_bytes: int = Field(default=12 * 1024 * 1024, ge=64)
    """Largest encoded image (bytes, after base64 decoding or as read from a URI)."""
    max_pixels: int = Field(default=2048 * 2048, ge=64)
    """Largest image, width x height, checked from the header before decoding."""
    min_side: int = Field(default=8, ge=1)
    """Smallest accepted image side (pixels)."""
    max_items: int = Field(default=64, ge=1)
    """Most items in one ``/v1/score:batch`` request."""
    max_caption_chars: int = Field(default=4096, ge=1)
    """Longest caption (characters); RFNet truncates to its token budget anyway."""


class ServeArgs(ScorerSettings, Limits):
    """Arguments of ``build_app`` (``serve run engine.serve:build_app key=value ...`` or a config's ``args``):
    the ``ScorerSettings`` (initial ``user_config``), the ``Limits`` and the deployment's own options below."""

    device: str = "auto"
    """Where each replica runs RFNet: ``auto`` / ``cpu`` / ``cuda``."""
    token_file: str | None = None
    """File holding the bearer token clients must send; ``None`` leaves the API open. Read by each replica."""
    allowed_uri_roots: list[str] = Field(default_factory=list)
    """fsspec URI prefixes images may be read from (``file:///data/ads``, ``s3://bucket/ads``); empty = none."""
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float | None = Field(default=None, gt=0)
    """Autoscaling target per replica; ``None`` = ``max_batch_size`` (one full batch in flight)."""
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Requests a replica holds at once; ``None`` = 4 x ``max_batch_size`` (a batch running, more forming)."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs reserved per replica."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per replica (1 on a GPU node)."""

    @field_validator("allowed_uri_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        # `serve run ... allowed_uri_roots=file:///a,s3://b` passes one string.
        return [r for r in v.split(",") if r] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check_bounds(self) -> "ServeArgs":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        for root in self.allowed_uri_roots:
            _normalise_uri(root)
        return self

    def settings(self) -> ScorerSettings:
        return ScorerSettings(**{k: getattr(self, k) for k in ScorerSettings.model_fields})

    def limits(self) -> Limits:
        return Limits(**{k: getattr(self, k) for k in Limits.model_fields})


# ----------------------------------------------------------------------------------------------------------
# Request parsing: every failure is an ApiError with a status and a reason code, never an exception that
# escapes as a 500.


class ApiError(Exception):
    def __init__(self, status: int, reason: str, detail: str = "", **extra: Any):
        super().__init__(f"{status} {reason}: {detail}")
        self.status, self.reason, self.detail, self.extra = status, reason, detail, extra

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        body = {"error": {"reason": self.reason, "detail": self.detail, **self.extra}}
        return JSONResponse(body, status_code=self.status, headers=headers)


class ImageRef(BaseModel):
    """An image given inline (base64, optionally as a ``data:`` URI) or by URI; exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    b64: str | None = None
    uri: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageRef":
        if (self.b64 is None) == (self.uri is None):
            raise ValueError("give exactly one of 'b64' or 'uri'")
        return self


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generated: ImageRef
    """The generated ad image (RGB; any size within the limits)."""
    product: ImageRef
    """The product cutout it was generated from, as laid out on the canvas: RGBA (alpha = product mask)
    or RGB on pure white."""
    caption: str
    """The product caption."""


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreRequest]


_PRODUCT_STATUS = {"file_too_large": 413, "too_many_pixels": 413}


@dataclass
class _Item:
    """One decoded request, ready for the model."""

    product_rgba: np.ndarray  # (H, W, 4) uint8
    generated: np.ndarray  # (H', W', 3) uint8
    caption: str


def _normalise_uri(uri: str) -> tuple[str, str]:
    """``(protocol, normalised absolute path)``; ``..`` segments are resolved, local paths made real."""
    if "::" in uri:
        raise ValueError(f"chained fsspec URIs are not accepted: {uri!r}")
    protocol, path = fsspec.core.split_protocol(uri)
    protocol = (protocol or "file").lower()
    if protocol in ("file", "local"):
        return "file", os.path.realpath(path)
    return protocol, posixpath.normpath("/" + path.lstrip("/"))


def _uri_allowed(uri: str, roots: list[tuple[str, str]]) -> bool:
    protocol, path = _normalise_uri(uri)
    for root_protocol, root in roots:
        if protocol == root_protocol and (path == root or path.startswith(root.rstrip("/") + "/")):
            return True
    return False


def _check_token(authorization: str | None, token_digest: bytes | None) -> None:
    if token_digest is None:
        return
    if not authorization:
        raise ApiError(401, "missing_token", "send 'Authorization: Bearer <token>'")
    scheme, _, given = authorization.partition(" ")
    # Compare fixed-length digests in constant time: neither the token nor its length leaks through timing.
    given_digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
    digest_ok = hmac.compare_digest(given_digest, token_digest)
    if not (digest_ok and scheme.lower() == "bearer"):
        raise ApiError(401, "bad_token", "the bearer token is wrong")


async def _read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON; 413 past ``limit`` bytes (checked before and while reading)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_content_length", f"Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise ApiError(413, "body_too_large", f"{length} bytes > {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"more than {limit} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ApiError(400, "malformed_json", f"{type(err).__name__}: {err}"[:300]) from None


def _validation_error(err: ValidationError, prefix: tuple = ()) -> ApiError:
    # Field locations and messages only: never echo the input back (it may be megabytes of base64).
    errors = [{"loc": [*prefix, *e["loc"]], "msg": e["msg"]} for e in err.errors(include_input=False)]
    return ApiError(422, "invalid_request", "the request does not match the schema", errors=errors)


class _Decoder:
    """Turns an ``ImageRef`` into pixels under the configured limits (blocking; run it in a thread)."""

    def __init__(self, limits: Limits, allowed_uri_roots: list[str]):
        self.limits = limits
        self.cond = ConditioningConfig(
            max_pixels=limits.max_pixels, max_bytes=limits.max_image_bytes, min_side=limits.min_side
        )
        self.roots = [_normalise_uri(r) for r in allowed_uri_roots]

    def item(self, req: ScoreRequest, where: str = "") -> _Item:
        if len(req.caption) > self.limits.max_caption_chars:
            raise ApiError(422, "caption_too_long", f"{len(req.caption)} > {self.limits.max_caption_chars} chars")
        product = self._pixels(req.product, f"{where}product", decode_product)
        generated = self._pixels(req.generated, f"{where}generated", decode_image)[..., :3]
        return _Item(product, np.ascontiguousarray(generated), req.caption)

    def _pixels(self, ref: ImageRef, field: str, decode) -> np.ndarray:
        data = self._bytes(ref, field)
        try:
            return decode(data, field, self.cond)
        except ProductImageError as err:
            raise ApiError(_PRODUCT_STATUS.get(err.reason, 422), err.reason, str(err), field=field) from None

    def _bytes(self, ref: ImageRef, field: str) -> bytes:
        limit = self.limits.max_image_bytes
        if ref.b64 is not None:
            text = ref.b64.split(",", 1)[1] if ref.b64.startswith("data:") else ref.b64
            if len(text) // 4 * 3 > limit + 2:
                raise ApiError(413, "file_too_large", f"base64 image over {limit} bytes", field=field)
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ApiError(400, "bad_base64", str(err), field=field) from None
        return self._read_uri(ref.uri, field, limit)

    def _read_uri(self, uri: str, field: str, limit: int) -> bytes:
        try:
            allowed = bool(self.roots) and _uri_allowed(uri, self.roots)
        except ValueError as err:
            raise ApiError(422, "uri_not_allowed", str(err), field=field) from None
        if not allowed:
            raise ApiError(422, "uri_not_allowed", "the URI is outside the allowed schemes/roots", field=field)
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            size = fs.size(path)
            if size is not None and size > limit:
                raise ApiError(413, "file_too_large", f"{size} bytes > {limit}", field=field)
            with fs.open(path, "rb") as f:
                data = f.read(limit + 1)
        except ApiError:
            raise
        except Exception as err:  # any filesystem failure is about the client's URI, not a server bug
            raise ApiError(422, "uri_unreadable", f"{type(err).__name__}", field=field) from None
        if len(data) > limit:
            raise ApiError(413, "file_too_large", f"more than {limit} bytes", field=field)
        return data


# ----------------------------------------------------------------------------------------------------------
# The deployment.


@dataclass(frozen=True)
class _Model:
    """What a batch needs, swapped as one reference so a batch never mixes two configs."""

    scorer: Scorer
    threshold: float
    key: tuple[str, str, str]


def _run_model(model: _Model, items: list[_Item]) -> list[dict | ApiError]:
    """Score a batch; items with the same image shapes go through ``Scorer.score`` together.

    If a group fails, its items are retried one by one, so an input the model cannot handle fails only its
    own request (a 422 naming the error) and never the other clients' requests that shared its batch.
    """
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.product_rgba.shape, it.generated.shape), []).append(i)
    out: list[dict | ApiError] = [{} for _ in items]
    for rows in groups.values():
        try:
            answers = _score_rows(model, [items[i] for i in rows])
        except Exception:
            answers = []
            for i in rows:
                try:
                    answers += _score_rows(model, [items[i]])
                except Exception as err:
                    logger.exception("RFNet failed on one input")
                    answers.append(ApiError(422, "unscorable", f"{type(err).__name__}: {err}"[:300]))
        for i, answer in zip(rows, answers, strict=True):
            out[i] = answer
    return out


def _score_rows(model: _Model, items: list[_Item]) -> list[dict]:
    result = model.scorer.score(
        np.stack([it.product_rgba for it in items]),
        np.stack([it.generated for it in items]),
        [it.caption for it in items],
    )
    answers = []
    for j in range(len(items)):
        p = float(result.p_available[j])
        answers.append(
            {
                "p_available": p,
                "defect": result.defect[j],
                "probabilities": {label: float(v) for label, v in zip(LABELS, result.probabilities[j], strict=True)},
                "accepted": p >= model.threshold,
                "threshold": model.threshold,
                "model": model.scorer.model_id,
            }
        )
    return answers


def _raise_if_error(answer: dict | ApiError) -> dict:
    if isinstance(answer, ApiError):
        raise answer
    return answer


api = FastAPI(title="adloop online scorer", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return err.response()


@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=10)
@serve.ingress(api)
class RFNetScorer:
    """One replica: a ``rfnet.Scorer`` plus request validation, batching and live reconfiguration."""

    def __init__(self, args: dict):
        cfg = ServeArgs.model_validate(args)
        self.device = cfg.device
        self.limits = cfg.limits()
        self.decoder = _Decoder(self.limits, cfg.allowed_uri_roots)
        self.token_digest = None
        if cfg.token_file:
            with open(cfg.token_file, "rb") as f:
                token = f.read().strip()
            if not token:
                raise ValueError(f"token file {cfg.token_file!r} is empty")
            self.token_digest = hashlib.sha256(token).digest()
        self.model: _Model | None = None
        self.config_error: str | None = None
        self._reload = asyncio.Lock()
        # The model gets its own thread: in the shared default pool it would queue behind image decoding.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfnet")

    async def reconfigure(self, user_config: dict) -> None:
        """Apply a new ``user_config`` (``ScorerSettings`` fields; missing ones take their defaults).

        The first config must load (a replica without a model never becomes ready). A later one that fails
        (a bad checkpoint path, an invalid value) is logged and reported by ``/readyz`` while the replica
        keeps serving its current model: a typo in a live update must not take the service down.
        """
        try:
            s = ScorerSettings.model_validate(user_config or {})
            async with self._reload:
                key = (s.checkpoint, s.depth, s.saliency)
                scorer = self.model.scorer if self.model is not None and self.model.key == key else None
                if scorer is None:
                    # Load beside the running model; requests keep using the old one until the swap below.
                    logger.info("loading RFNet %s (depth %s, saliency %s)", *key)
                    scorer = await asyncio.to_thread(
                        Scorer, s.checkpoint, device=self.device, depth=s.depth, saliency=s.saliency
                    )
                threshold = scorer.threshold if s.threshold is None else s.threshold
                self._score_batch.set_max_batch_size(s.max_batch_size)
                self._score_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
                self.model, self.config_error = _Model(scorer, threshold, key), None
        except Exception as err:
            if self.model is None:
                raise
            self.config_error = f"{type(err).__name__}: {err}"[:500]
            logger.exception("user_config rejected; still serving %s", self.model.scorer.model_id)
            return
        logger.info("serving %s at threshold %.4f, batch %d", scorer.model_id, threshold, s.max_batch_size)

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("RFNet is not loaded")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "replica": serve.get_replica_context().replica_id.unique_id}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        if self.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        body = {"status": "ready", "model": self.model.scorer.model_id, "threshold": self.model.threshold}
        if self.config_error:
            body["config_error"] = self.config_error  # the last live update failed; see the replica log
        return JSONResponse(body)

    async def _authorised_request(self, request: Request, model):
        """Check the token, read the body within the size limit, and validate it as ``model``."""
        _check_token(request.headers.get("authorization"), self.token_digest)
        payload = await _read_json(request, self.limits.max_body_bytes)
        try:
            return model.model_validate(payload)
        except ValidationError as err:
            raise _validation_error(err) from None

    @api.post("/v1/score")
    async def score(self, request: Request) -> dict:
        req = await self._authorised_request(request, ScoreRequest)
        item = await asyncio.to_thread(self.decoder.item, req)
        return _raise_if_error(await self._score_batch(item))

    @api.post("/v1/score:batch")
    async def score_batch(self, request: Request) -> dict:
        req = await self._authorised_request(request, BatchRequest)
        if not req.items:
            raise ApiError(422, "empty_batch", "'items' is empty")
        if len(req.items) > self.limits.max_items:
            raise ApiError(413, "too_many_items", f"{len(req.items)} > {self.limits.max_items}")
        # Decode every item first, so a bad one refuses the whole request before any model work.
        items = await asyncio.to_thread(
            lambda: [self.decoder.item(r, where=f"items[{i}].") for i, r in enumerate(req.items)]
        )
        # Each item joins the shared batch queue, mixed with other clients' requests.
        answers = await asyncio.gather(*(self._score_batch(it) for it in items))
        return {"results": [_raise_if_error(a) for a in answers]}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_batch(self, items: list[_Item]) -> list[dict | ApiError]:
        model = self.model
        if model is None:
            raise ApiError(503, "not_ready", "RFNet is still loading")
        # The model runs in a thread so this replica keeps accepting and decoding requests meanwhile.
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, _run_model, model, items)


def build_app(args: ServeArgs) -> Application:
    """The typed app builder behind ``serve run engine.serve:build_app key=value ...`` and the Serve config.

    The live settings (``ScorerSettings``) travel only in ``user_config``, never in the replica's init args,
    so ``serve deploy`` of a config whose ``user_config`` changed reconfigures the running replicas instead
    of replacing them (Serve derives the code version from the import path and ``args``). A Python
    ``serve.run`` always gets a new code version from Serve, so it replaces replicas (gracefully).

    Args:
        args: a ``ServeArgs`` (Serve validates a dict of strings into it).

    Returns:
        The bound application: one autoscaling ``RFNetScorer`` deployment.
    """
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    max_ongoing = args.max_ongoing_requests or 4 * args.max_batch_size
    autoscaling = {
        "min_replicas": args.min_replicas,
        "initial_replicas": max(1, args.min_replicas),
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests or args.max_batch_size,
    }
    return RFNetScorer.options(
        user_config=args.settings().model_dump(),
        autoscaling_config=autoscaling,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    ).bind(args.model_dump(exclude=set(ScorerSettings.model_fields)))
