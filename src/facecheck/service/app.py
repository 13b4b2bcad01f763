"""The onboarding service: ``facecheck serve`` (FastAPI; OpenAPI docs at ``/docs``).

- ``POST /v1/checks``: an image upload (and an optional external application id) in, a
  verdict out: ``real``, ``review`` or ``fake`` (the review band, see
  :func:`facecheck.service.scoring.service_verdict`), or ``no_face``, ``multiple_faces``,
  ``invalid_image``. Every ``review`` (and by default every ``fake``) opens a case in the
  review queue (:mod:`facecheck.service.review`). ``GET /v1/checks/{id}`` returns it again, with the
  reviewer's decision once there is one.
- ``GET /health`` and ``GET /metrics`` (Prometheus text: requests, latencies, verdicts, open
  cases).

The API needs an ``X-API-Key`` (keys are stored hashed: ``facecheck apikey create``); the
review pages need a reviewer login. Uploads are size-limited before they are read, their type
is sniffed from the bytes, and clients never name a path on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
import time
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from facecheck import __version__
from facecheck.detector.pipeline import Detector
from facecheck.service.review import router as review_router
from facecheck.service.scoring import VERDICTS, BatchScorer, sniff
from facecheck.service.security import new_token
from facecheck.service.settings import ServiceSettings
from facecheck.service.store import Store

log = logging.getLogger("facecheck.service")
Verdicts = Literal["real", "fake", "review", "no_face", "multiple_faces", "invalid_image"]
UPLOAD_PATHS = ("/v1/checks",)


class RegionScores(BaseModel):
    left_eye: float
    right_eye: float
    nose: float
    mouth: float


class CaseStatus(BaseModel):
    id: int
    status: Literal["open", "decided"]
    decision: Literal["real", "fake"] | None = None
    decided_at: str | None = None


class CheckResult(BaseModel):
    """One scored upload."""

    id: str = Field(description="check id, for GET /v1/checks/{id}")
    external_id: str | None = Field(None, description="the caller's application id, if sent")
    created_at: str
    verdict: Verdicts = Field(
        description="real / fake: decided automatically; review: a person decides (see "
        "case); no_face / multiple_faces / invalid_image: the upload could not be judged"
    )
    fake_probability: float | None = Field(None, description="the detector's score in [0, 1]")
    threshold: float | None = Field(None, description="scores at or above it are flagged")
    regions: RegionScores | None = Field(
        None, description="P(replaced) per face region, for flagged images"
    )
    error: str | None = None
    model_version: str
    timing_ms: float = Field(description="server time to score this upload")
    case: CaseStatus | None = Field(None, description="the review case, if one was opened")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    model_version: str
    database: str
    open_cases: int | None


class Problem(BaseModel):
    detail: str


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facecheck_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facecheck_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.verdicts = Counter(
            "facecheck_verdicts", "checks by verdict", ["verdict"], registry=self.registry
        )
        self.batch = Histogram(
            "facecheck_batch_size",
            "images scored per model call",
            buckets=(1, 2, 4, 8, 16),
            registry=self.registry,
        )
        self.open_cases = Gauge(
            "facecheck_open_cases", "review cases waiting for a decision", registry=self.registry
        )
        for v in VERDICTS:
            self.verdicts.labels(v)


class UploadLimit:
    """Refuse upload bodies over the limit before the app parses them.

    A declared Content-Length over the limit is refused at once; a body without one (chunked)
    is read up to the limit here and replayed to the app, or refused as soon as it passes it.
    """

    def __init__(self, app, limit: int):
        self.app = app
        # The multipart envelope (boundaries, headers, the external id) on top of the file.
        self.limit = limit + 16 * 1024

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in UPLOAD_PATHS:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await _too_large(send)
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await _too_large(send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send) -> None:
    body = b'{"detail":"upload too large"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="from `facecheck apikey create`"
)


async def api_key(request: Request, key: Annotated[str | None, Depends(api_key_header)]) -> int:
    """The id of the request's live API key, or 401."""
    key_id = await asyncio.to_thread(request.app.state.store.api_key_id, key)
    if key_id is None:
        raise HTTPException(401, "missing or unknown API key (header X-API-Key)")
    return key_id


def _bootstrap(store: Store, out=None) -> None:
    """First start: make one API key and one reviewer and print them once (never stored)."""
    out = out or sys.stderr
    if store.count_api_keys() == 0:
        key = store.create_api_key("default")
        print(f"facecheck serve: created API key 'default' (shown once): {key}", file=out)
    if store.count_reviewers() == 0:
        password = new_token()[:20]
        store.add_reviewer("admin", password)
        print(
            f"facecheck serve: created reviewer 'admin' with password (shown once): {password}",
            file=out,
        )


def create_app(
    settings: ServiceSettings | None = None,
    *,
    detector: Detector | None = None,
    store: Store | None = None,
    bootstrap: bool = True,
) -> FastAPI:
    """The service app. ``detector``/``store`` default to those the settings name."""
    settings = settings or ServiceSettings.from_env()
    metrics = _Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        st = store or Store(settings.url)
        det = detector or Detector.load(settings.model)  # None: the shipped bundle
        if bootstrap:
            _bootstrap(st)
        scorer = BatchScorer(det, fake_above=settings.fake_above, max_batch=settings.max_batch)
        await scorer.start()
        app.state.store, app.state.detector, app.state.scorer = st, det, scorer
        purge = asyncio.create_task(_purge_loop(st, settings))
        log.info("facecheck serve: model %s, database %s", det.version, st.dialect)
        try:
            yield
        finally:
            purge.cancel()
            await scorer.stop()
            if store is None:
                st.dispose()

    app = FastAPI(
        title="facecheck",
        version=__version__,
        summary="Edited and generated face detection with a human in the loop.",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - t0)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.post(
        "/v1/checks",
        status_code=201,
        response_model=CheckResult,
        responses={
            401: {"model": Problem, "description": "no or unknown API key"},
            413: {"model": Problem, "description": "upload over the size limit"},
            415: {"model": Problem, "description": "not a JPEG/PNG/WebP/GIF/BMP/TIFF image"},
        },
        summary="Score one face image",
    )
    async def create_check(
        request: Request,
        image: Annotated[UploadFile, File(description="the face image (JPEG, PNG, WebP, ...)")],
        key_id: Annotated[int, Depends(api_key)],
        external_id: Annotated[
            str | None, Form(max_length=128, description="your application id, echoed back")
        ] = None,
    ) -> CheckResult:
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, "upload too large")
        if not data:
            raise HTTPException(415, "the upload is empty")
        media = sniff(data)
        if media is None:
            raise HTTPException(415, "not a JPEG, PNG, WebP, GIF, BMP or TIFF image")
        scored = await request.app.state.scorer.score(data)
        v = scored.verdict
        metrics.verdicts.labels(scored.service_verdict).inc()
        metrics.batch.observe(scored.batch_size)
        result = {
            **v.to_dict(),
            "verdict": scored.service_verdict,
            "timing_ms": scored.timing_ms,
        }
        opens = scored.service_verdict == "review" or (
            scored.service_verdict == "fake" and settings.cases_for_fakes
        )
        st: Store = request.app.state.store
        # Images are kept only for cases, which a person must see (personal data).
        check_id, _case, _now = await asyncio.to_thread(
            st.add_check,
            result,
            api_key_id=key_id,
            external_id=external_id,
            image=data if opens else None,
            media_type=media,
            open_case=opens,
        )
        return CheckResult(**await asyncio.to_thread(st.get_check, check_id))

    @app.get(
        "/v1/checks/{check_id}",
        response_model=CheckResult,
        responses={404: {"model": Problem}, 401: {"model": Problem}},
        summary="A check again, with the review decision once there is one",
    )
    async def get_check(
        request: Request, check_id: str, key_id: Annotated[int, Depends(api_key)]
    ) -> CheckResult:
        found = await asyncio.to_thread(request.app.state.store.get_check, check_id, key_id)
        if found is None:  # also for checks made with another key: no enumeration
            raise HTTPException(404, "no such check")
        return CheckResult(**found)

    @app.get("/health", response_model=Health, summary="Liveness and readiness")
    async def health(request: Request):
        st: Store = request.app.state.store
        try:
            ok = await asyncio.to_thread(st.ping)
            n_open = await asyncio.to_thread(st.count_open)
        except Exception as exc:  # the database is down: say so, with 503
            body = Health(
                status="degraded",
                version=__version__,
                model_version=request.app.state.detector.version,
                database=f"error: {type(exc).__name__}",
                open_cases=None,
            )
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(
            status="ok" if ok else "degraded",
            version=__version__,
            model_version=request.app.state.detector.version,
            database=st.dialect,
            open_cases=n_open,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus(request: Request) -> Response:
        metrics.open_cases.set(await asyncio.to_thread(request.app.state.store.count_open))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(review_router)
    # Outermost: refuses an oversized body before FastAPI's multipart parser spools it.
    app.add_middleware(UploadLimit, limit=settings.max_upload_bytes)
    return app


async def _purge_loop(store: Store, settings: ServiceSettings, every_s: float = 3600) -> None:
    """Delete images past the retention period at start-up and then hourly."""
    while True:
        try:
            n = await asyncio.to_thread(
                store.purge_images, dt.timedelta(days=settings.retention_days)
            )
            if n:
                log.info(
                    "retention: deleted %d images older than %g days", n, settings.retention_days
                )
        except Exception:  # a failed purge is retried next hour; the service keeps serving
            log.exception("retention purge failed")
        await asyncio.sleep(every_s)


def serve(settings: ServiceSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
