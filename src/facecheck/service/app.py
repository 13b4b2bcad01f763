"""The onboarding service: ``facecheck serve`` (FastAPI; OpenAPI docs at ``/docs``).

- ``POST /v1/checks``: an image upload (and an optional external application id) in, a
  verdict out: ``real``, ``review`` or ``fake`` (the review band, see
  :func:`facecheck.service.scoring.service_verdict`), or ``no_face``, ``multiple_faces``,
  ``invalid_image``. Every ``review`` (and by default every ``fake``) opens a case in the
  review queue (:mod:`facecheck.service.review`). ``GET /v1/checks/{id}`` returns it again, with the
  reviewer's decision once there is one.
- ``GET /health`` (proves the database takes writes; 503 when it does not) and
  ``GET /metrics`` (Prometheus text: requests, latencies, verdicts, open cases).

The API, ``/metrics`` and these docs need an ``X-API-Key`` (keys are stored hashed:
``facecheck apikey create``); the review pages need a reviewer login. Every body is
size-limited before it is read (uploads and forms alike), a request that declares both
``Content-Length`` and ``Transfer-Encoding`` is refused, uploads waiting for the model are
bounded (503 with ``Retry-After`` past it), each key has a per-minute quota (429), the upload's
type is sniffed from its bytes, and clients never name a path on the server. A write the
database refuses is answered 503 in JSON: nothing is acknowledged that was not stored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from facecheck import __version__
from facecheck.detector.pipeline import Detector
from facecheck.service.review import router as review_router
from facecheck.service.scoring import VERDICTS, BatchScorer, Busy, sniff
from facecheck.service.security import new_token
from facecheck.service.settings import ServiceSettings
from facecheck.service.store import Store
from facecheck.service.webhooks import Sender

log = logging.getLogger("facecheck.service")
Verdicts = Literal["real", "fake", "review", "no_face", "multiple_faces", "invalid_image"]
UPLOAD_PATHS = ("/v1/checks",)
# Methods a metric may be labelled with; anything else is "other" (no unbounded series).
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# The caller's application id: printable, no control characters (log and export safety).
EXTERNAL_ID = r"^[^\x00-\x1f\x7f]*$"


class RegionScores(BaseModel):
    left_eye: float
    right_eye: float
    nose: float
    mouth: float


class CaseStatus(BaseModel):
    id: int
    status: Literal["open", "second", "escalated", "decided"] = Field(
        description="open: waiting for a reviewer; second: a reviewer said fake and a second "
        "must agree; escalated: they disagreed, an admin decides; decided: final"
    )
    decision: Literal["real", "fake"] | None = None
    reason: str | None = Field(None, description="the deciding reviewer's reason code")
    decided_at: str | None = None


class MemberVote(BaseModel):
    member: str | None = Field(None, description="the member detector's version")
    fake_probability: float | None
    threshold: float | None
    vote: Literal["real", "fake"]


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
    votes: list[MemberVote] | None = Field(
        None, description="with a panel of detectors: each member's vote (any disagreement: review)"
    )


class CheckList(BaseModel):
    """A page of checks, newest first."""

    items: list[CheckResult]
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page; null on the last page"
    )


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
        self.denied = Counter(
            "facecheck_api_denied", "API requests without a live key", registry=self.registry
        )
        self.storage_errors = Counter(
            "facecheck_storage_errors",
            "requests answered 503 because the database refused",
            registry=self.registry,
        )
        for v in VERDICTS:
            self.verdicts.labels(v)


class BodyLimit:
    """Refuse over-long or ambiguously framed bodies before the app parses them (ASGI).

    Every route has a limit: uploads ``upload_limit`` (plus the multipart envelope), any
    other body ``form_limit``. A request with both Content-Length and Transfer-Encoding is
    refused (400: the two framings can disagree, the classic smuggling set-up), as is a
    Content-Length that is not a number. A declared length over the limit is refused at
    once; a chunked body is read up to the limit and replayed, or refused as soon as it
    passes it.
    """

    def __init__(self, app, upload_limit: int, form_limit: int):
        self.app = app
        self.upload_limit = upload_limit + 16 * 1024
        self.form_limit = form_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and b"transfer-encoding" in headers:
            return await _refuse(send, 400, "both Content-Length and Transfer-Encoding")
        limit = self.upload_limit if scope["path"] in UPLOAD_PATHS else self.form_limit
        if length is not None:
            if not length.isdigit():
                return await _refuse(send, 400, "invalid Content-Length")
            if int(length) > limit:
                return await _refuse(send, 413, "request body too large")
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > limit:
                return await _refuse(send, 413, "request body too large")
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _refuse(send, status: int, detail: str) -> None:
    body = b'{"detail":"' + detail.encode() + b'"}'
    await send(
        {
            "type": "http.response.start",
            "status": status,
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
        request.app.state.metrics.denied.inc()
        raise HTTPException(401, "missing or unknown API key (header X-API-Key)")
    return key_id


async def _docs_key(request: Request, key: Annotated[str | None, Depends(api_key_header)]):
    """/metrics and the docs: an API key, unless the settings open them (separate bind)."""
    if not request.app.state.settings.public_metrics_and_docs:
        await api_key(request, key)


FIRST_START_SECRETS = "first-start-secrets.txt"


def private_dir(path: Path) -> Path:
    """``path`` created (or narrowed) to 0700: the database and secrets are personal data."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _bootstrap(store: Store, data_dir: Path) -> Path | None:
    """First start: make one API key and one reviewer, written once to a 0600 file under
    the data directory (never to the log; read it, then delete it). Returns the file."""
    lines = []
    if store.count_api_keys() == 0:
        lines.append(f"API key 'default': {store.create_api_key('default')}")
    if store.count_reviewers() == 0:
        password = new_token()[:20]
        store.add_reviewer("admin", password, role="admin")
        lines.append(f"reviewer 'admin', password: {password}")
    if not lines:
        return None
    path = private_dir(data_dir) / FIRST_START_SECRETS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write("".join(line + "\n" for line in lines))
    log.warning("facecheck serve: first start: credentials written to %s (0600)", path)
    return path


def _private_files(settings: ServiceSettings) -> None:
    """The SQLite file 0600 (SQLite gives its -wal and -shm files the same mode)."""
    if settings.database_url is None:
        private_dir(settings.data_dir)
        db = settings.data_dir / "facecheck.db"
        if db.exists():
            db.chmod(0o600)


def create_app(
    settings: ServiceSettings | None = None,
    *,
    detector: Detector | None = None,
    members: list[Detector] | None = None,
    store: Store | None = None,
    bootstrap: bool = True,
) -> FastAPI:
    """The service app. ``detector``, ``members`` (further voting detectors) and ``store``
    default to those the settings name."""
    settings = settings or ServiceSettings.from_env()
    metrics = _Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if store is None:
            _private_files(settings)  # the directory before the file is made in it
        st = store or Store(settings.url)
        if store is None:
            _private_files(settings)
        det = detector or Detector.load(settings.model)  # None: the shipped bundle
        panel = (
            members if members is not None else [Detector.load(p) for p in settings.member_paths]
        )
        if bootstrap:
            _bootstrap(st, settings.data_dir)
        scorer = BatchScorer(
            det,
            fake_above=settings.fake_above,
            max_batch=settings.max_batch,
            max_pending=settings.max_pending,
            members=panel,
        )
        await scorer.start()
        app.state.store, app.state.detector, app.state.scorer = st, det, scorer
        purge = asyncio.create_task(_purge_loop(st, settings))
        sender = None
        if settings.webhook_url:
            sender = asyncio.create_task(
                Sender(
                    st,
                    settings.webhook_url,
                    str(settings.webhook_secret),
                    base_backoff_s=settings.webhook_backoff_s,
                ).run()
            )
        log.info("facecheck serve: model %s, database %s", det.version, st.dialect)
        try:
            yield
        finally:
            purge.cancel()
            if sender is not None:
                sender.cancel()
            await scorer.stop()
            if store is None:
                st.dispose()

    # The docs and the schema are served by the routes below, behind the API key, with
    # Swagger UI's assets from the package (no third-party script on this origin).
    app = FastAPI(
        title="facecheck",
        version=__version__,
        summary="Edited and generated face detection with a human in the loop.",
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = request.method if request.method in METHODS else "other"
        metrics.requests.labels(method, path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - t0)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if settings.hsts:
            response.headers.setdefault(
                "Strict-Transport-Security", "max-age=31536000; includeSubDomains"
            )
        return response

    @app.exception_handler(SQLAlchemyError)
    async def storage_failed(request: Request, exc: SQLAlchemyError):
        # The database refused a read or a write (disk full, locked, gone): say so in JSON
        # with 503, so the client retries; nothing was acknowledged.
        log.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        metrics.storage_errors.inc()
        return JSONResponse(
            {"detail": "storage unavailable; nothing was stored, try again"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

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
            str | None,
            Form(
                max_length=128,
                pattern=EXTERNAL_ID,
                description="your application id, echoed back (no control characters)",
            ),
        ] = None,
    ) -> CheckResult:
        st: Store = request.app.state.store
        quota = settings.key_quota_per_minute
        if quota and await asyncio.to_thread(st.checks_since, key_id, 60.0) >= quota:
            raise HTTPException(
                429, f"over this key's quota of {quota} checks a minute", {"Retry-After": "60"}
            )
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, "upload too large")
        if not data:
            raise HTTPException(415, "the upload is empty")
        media = sniff(data)
        if media is None:
            raise HTTPException(415, "not a JPEG, PNG, WebP, GIF, BMP or TIFF image")
        try:
            scored = await request.app.state.scorer.score(data)
        except Busy as exc:
            raise HTTPException(503, str(exc), {"Retry-After": "2"}) from None
        v = scored.verdict
        metrics.verdicts.labels(scored.service_verdict).inc()
        metrics.batch.observe(scored.batch_size)
        result = {
            **v.to_dict(),
            "verdict": scored.service_verdict,
            "timing_ms": scored.timing_ms,
            "votes": scored.votes,
        }
        opens = scored.service_verdict == "review" or (
            scored.service_verdict == "fake" and settings.cases_for_fakes
        )
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
        "/v1/checks",
        response_model=CheckList,
        responses={401: {"model": Problem}, 422: {"model": Problem}},
        summary="This key's checks, newest first, a page at a time",
    )
    async def list_checks(
        request: Request,
        key_id: Annotated[int, Depends(api_key)],
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        verdict: Annotated[Verdicts | None, Query()] = None,
        since: Annotated[dt.datetime | None, Query(description="ISO time, UTC")] = None,
    ) -> CheckList:
        after = _cursor_in(cursor) if cursor else None
        if since is not None and since.tzinfo is not None:
            since = since.astimezone(dt.UTC).replace(tzinfo=None)
        rows = await asyncio.to_thread(
            request.app.state.store.list_checks,
            key_id,
            limit=limit + 1,  # one more: is there a next page?
            after=after,
            verdict=verdict,
            since=since,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return CheckList(
            items=[CheckResult(**r) for r in rows],
            next_cursor=_cursor_out(rows[-1]) if more else None,
        )

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

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "the database takes no writes"}},
        summary="Liveness and readiness: the database takes a write",
    )
    async def health(request: Request):
        st: Store = request.app.state.store
        try:
            ok = await asyncio.to_thread(st.ping)
            await asyncio.to_thread(st.probe_write)
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

    @app.get(
        "/metrics",
        summary="Prometheus metrics (an API key, as X-API-Key)",
        response_class=Response,
        dependencies=[Depends(_docs_key)],
    )
    async def prometheus(request: Request) -> Response:
        metrics.open_cases.set(await asyncio.to_thread(request.app.state.store.count_open))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(_docs_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(_docs_key)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="facecheck API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    app.mount("/docs-assets", StaticFiles(directory=_swagger_assets()), name="docs-assets")
    app.include_router(review_router)
    # Outermost: refuses an oversized or ambiguous body before any parser spools it.
    app.add_middleware(
        BodyLimit, upload_limit=settings.max_upload_bytes, form_limit=settings.max_form_bytes
    )
    return app


def _cursor_out(row: dict) -> str:
    raw = f"{row['created_at']}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_in(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        t, check_id = raw.split("|", 1)
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        return when.astimezone(dt.UTC).replace(tzinfo=None), check_id
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(422, "invalid cursor") from None


def _swagger_assets() -> str:
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


def purge(store: Store, settings: ServiceSettings) -> dict[str, int]:
    """Apply the retention periods once: images, check rows (0: kept), audit events."""
    days = dt.timedelta(days=1)
    done = {"images": store.purge_images(settings.retention_days * days)}
    if settings.check_retention_days:
        done["checks"] = store.purge_checks(settings.check_retention_days * days)
    done["audit events"] = store.purge_audit(settings.audit_retention_days * days)
    return done


async def _purge_loop(store: Store, settings: ServiceSettings, every_s: float = 3600) -> None:
    """Apply the retention periods at start-up and then hourly."""
    while True:
        try:
            done = await asyncio.to_thread(purge, store, settings)
            if any(done.values()):
                log.info("retention: deleted %s", ", ".join(f"{n} {k}" for k, n in done.items()))
        except Exception:  # a failed purge is retried next hour; the service keeps serving
            log.exception("retention purge failed")
        await asyncio.sleep(every_s)


def serve(settings: ServiceSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
