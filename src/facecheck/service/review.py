"""The review queue's web pages (server-rendered HTML under ``/review``).

A reviewer logs in, sees the open cases oldest first, opens one (which claims it: a lease of
``lease_seconds``, so two reviewers never work on the same case), looks at the image, the
heatmap and the region scores, and decides real or fake with an optional comment. The
decision, reviewer and time are stored and the case leaves the queue.

Sessions are random tokens in an HttpOnly, SameSite=Strict, Secure cookie named
``__Host-...`` (so no subdomain or plain-HTTP page can set it; stored hashed); every form
carries the session's CSRF token (the login form a double-submit one), and pages are sent
with a Content-Security-Policy that allows no scripts at all. Failed logins lock the
account, and the client address, with a growing back-off; every login, view, claim,
release and decision is an audit event (:mod:`facecheck.service.audit`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import io
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image

from facecheck.detector.explain import explain, render, save_png
from facecheck.image.decode import load_image
from facecheck.image.regions import REGIONS
from facecheck.service.audit import Who
from facecheck.service.cases import OPEN_STATES, REASONS, CaseView
from facecheck.service.scoring import sniff
from facecheck.service.security import new_token, same
from facecheck.service.store import SessionInfo, Store, utcnow

SESSION_COOKIE = "fc_review"
LOGIN_CSRF_COOKIE = "fc_login_csrf"


def _cookie(request: Request, name: str) -> tuple[str, str]:
    """(cookie name, path): ``__Host-`` prefixed at path / when cookies are Secure (the
    prefix demands both); plain, under /review, for development on plain HTTP."""
    if request.app.state.settings.secure_cookies:
        return f"__Host-{name}", "/"
    return name, "/review"


def _set_cookie(request: Request, response: Response, name: str, value: str, **kw) -> None:
    cookie, path = _cookie(request, name)
    secure = request.app.state.settings.secure_cookies
    response.set_cookie(
        cookie, value, httponly=True, samesite="strict", secure=secure, path=path, **kw
    )


def _get_cookie(request: Request, name: str) -> str | None:
    return request.cookies.get(_cookie(request, name)[0])


def _drop_cookie(request: Request, response: Response, name: str) -> None:
    cookie, path = _cookie(request, name)
    secure = request.app.state.settings.secure_cookies
    response.delete_cookie(cookie, path=path, secure=secure, httponly=True, samesite="strict")


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def who(request: Request, info: SessionInfo | None = None) -> Who:
    return Who(info.username if info else "anonymous", client_address(request))


CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

router = APIRouter(prefix="/review", include_in_schema=False)
# Case ids fit the database's integer: a longer one is a 422, not a database error.
CaseId = Annotated[int, Path(ge=1, le=2**31 - 1)]
templates = Jinja2Templates(directory=str(resources.files("facecheck") / "resources" / "templates"))


def _age(t: dt.datetime) -> str:
    s = max(0, int((utcnow() - t).total_seconds()))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


templates.env.filters["age"] = _age
templates.env.filters["pct"] = lambda p: "–" if p is None else f"{100 * p:.1f}%"


def _page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    _harden(response)
    return response


def _harden(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"


def _store(request: Request) -> Store:
    return request.app.state.store


async def _reviewer(request: Request) -> SessionInfo:
    """The logged-in reviewer, or a redirect to the login page."""
    info = await asyncio.to_thread(_store(request).session, _get_cookie(request, SESSION_COOKIE))
    if info is None:
        raise HTTPException(303, "log in first", headers={"Location": "/review/login"})
    return info


def _check_csrf(info: SessionInfo, token: str) -> None:
    if not same(info.csrf_token, token):
        raise HTTPException(403, "invalid or missing CSRF token: reload the page")


def _lease(request: Request) -> dt.timedelta:
    return dt.timedelta(seconds=request.app.state.settings.lease_seconds)


def _top_region(case: CaseView) -> str | None:
    if not case.regions:
        return None
    return max(case.regions, key=lambda r: case.regions[r])


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, error: str | None = None):
    token = new_token()
    response = _page(request, "login.html", csrf_token=token, error=error)
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token)
    return response


@router.post("/login")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=200)],
    csrf_token: Annotated[str, Form()] = "",
):
    if not same(_get_cookie(request, LOGIN_CSRF_COOKIE), csrf_token):
        raise HTTPException(403, "invalid or missing CSRF token: reload the login page")
    st = _store(request)
    settings = request.app.state.settings
    address = client_address(request)
    wait = await asyncio.to_thread(
        st.login_retry_after,
        username,
        address,
        max_failures=settings.login_max_failures,
        window_s=settings.login_window_s,
    )
    if wait is not None:  # locked: the password is not even checked
        await asyncio.to_thread(st.record, Who(username, address), "login.locked")
        response = _page(
            request,
            "message.html",
            status=429,
            me=None,
            title="Too many failed logins",
            message=f"Logins for this account or from this address are paused for "
            f"{int(wait) + 1} s after repeated failures.",
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    reviewer_id = await asyncio.to_thread(st.authenticate, username, password, address)
    if reviewer_id is None:
        return RedirectResponse("/review/login?error=1", status_code=303)
    ttl = dt.timedelta(hours=settings.session_hours)
    token, _csrf = await asyncio.to_thread(st.new_session, reviewer_id, ttl)
    response = RedirectResponse("/review", status_code=303)
    _set_cookie(request, response, SESSION_COOKIE, token, max_age=int(ttl.total_seconds()))
    _drop_cookie(request, response, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = ""):
    info = await _reviewer(request)
    _check_csrf(info, csrf_token)
    await asyncio.to_thread(
        _store(request).end_session, _get_cookie(request, SESSION_COOKIE), who(request, info)
    )
    response = RedirectResponse("/review/login", status_code=303)
    _drop_cookie(request, response, SESSION_COOKIE)
    return response


@router.get("", response_class=HTMLResponse)
async def queue(
    request: Request,
    decided: int | None = None,
    none: int | None = None,
    status: Annotated[str, Query(max_length=20)] = "",
    verdict: Annotated[str, Query(max_length=20)] = "",
    q: Annotated[str, Query(max_length=128)] = "",
):
    """The cases waiting for a person, oldest first, filtered by state, the model's verdict
    or a part of the application id."""
    info = await _reviewer(request)
    states = (status,) if status in OPEN_STATES else OPEN_STATES
    cases = await asyncio.to_thread(
        _store(request).open_cases, states=states, verdict=verdict or None, search=q or None
    )
    return _page(
        request,
        "queue.html",
        me=info,
        cases=cases,
        now=utcnow(),
        top_region=_top_region,
        decided=await asyncio.to_thread(_store(request).case, decided) if decided else None,
        empty_claim=bool(none),
        filters={"status": status, "verdict": verdict, "q": q},
        states=OPEN_STATES,
    )


@router.post("/next")
async def claim_next(request: Request, csrf_token: Annotated[str, Form()] = ""):
    info = await _reviewer(request)
    _check_csrf(info, csrf_token)
    case_id = await asyncio.to_thread(
        _store(request).claim_next,
        info.reviewer_id,
        _lease(request),
        who(request, info),
        info.role,
    )
    if case_id is None:
        return RedirectResponse("/review?none=1", status_code=303)
    return RedirectResponse(f"/review/cases/{case_id}", status_code=303)


@router.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(request: Request, case_id: CaseId):
    info = await _reviewer(request)
    st = _store(request)
    case = await asyncio.to_thread(st.case, case_id)
    if case is None:
        raise HTTPException(404, "no such case")
    mine = False
    if case.status in OPEN_STATES:
        # Opening a case claims it (or renews the claim) if this reviewer may work on it
        # and nobody else holds it.
        mine = await asyncio.to_thread(
            st.claim, case_id, info.reviewer_id, _lease(request), who(request, info), info.role
        )
        case = await asyncio.to_thread(st.case, case_id)
    if not mine:  # a claim records itself; a look at a case one does not hold, here
        await asyncio.to_thread(st.record, who(request, info), "case.view", case_id)
    history = await asyncio.to_thread(st.case_history, case_id)
    response = _page(
        request,
        "case.html",
        me=info,
        case=case,
        mine=mine,
        regions=REGIONS,
        top_region=_top_region(case),
        lease_minutes=request.app.state.settings.lease_seconds // 60,
        reasons=REASONS,
        history=history,
        why_not=_why_not(case, info),
    )
    # The case page's one script (keyboard shortcuts, zoom), from this origin only.
    response.headers["Content-Security-Policy"] = CSP.replace(
        "default-src 'none';", "default-src 'none'; script-src 'self';"
    )
    return response


def _why_not(case: CaseView, info: SessionInfo) -> str | None:
    """Why this reviewer cannot decide an undecided case they do not hold, in words."""
    if case.status not in OPEN_STATES:
        return None
    if info.role == "auditor":
        return "Auditors can read cases but not decide them."
    if case.status == "second" and case.first_decided_by == info.username:
        return "You gave the first decision: a second reviewer must confirm it."
    if case.status == "escalated" and info.role != "admin":
        return "The two reviewers disagreed: an admin decides this case."
    if case.claimed_by and case.claimed_by != info.username:
        return f"{case.claimed_by} is reviewing this case."
    return None


@router.post("/cases/{case_id}/decision")
async def decide(
    request: Request,
    case_id: CaseId,
    decision: Annotated[str, Form()],
    reason: Annotated[str, Form(max_length=40)] = "",
    comment: Annotated[str, Form(max_length=2000)] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    info = await _reviewer(request)
    _check_csrf(info, csrf_token)
    if decision not in REASONS:
        raise HTTPException(422, "decision must be real or fake")
    if reason not in REASONS[decision]:
        raise HTTPException(
            422, f"choose a reason for {decision!r}: {', '.join(REASONS[decision])}"
        )
    ok = await asyncio.to_thread(
        functools.partial(
            _store(request).decide,
            case_id,
            info.reviewer_id,
            decision,
            comment,
            who(request, info),
            reason=reason,
            four_eyes=request.app.state.settings.four_eyes,
            notify=bool(request.app.state.settings.webhook_url),
        )
    )
    if not ok:
        return _page(
            request,
            "message.html",
            status=409,
            me=info,
            title="Not recorded",
            message="This case is no longer yours to decide: it was decided already, or your "
            "claim on it ran out and another reviewer took it.",
        )
    return RedirectResponse(f"/review?decided={case_id}", status_code=303)


@router.post("/cases/{case_id}/release")
async def release(request: Request, case_id: CaseId, csrf_token: Annotated[str, Form()] = ""):
    info = await _reviewer(request)
    _check_csrf(info, csrf_token)
    await asyncio.to_thread(_store(request).release, case_id, info.reviewer_id, who(request, info))
    return RedirectResponse("/review", status_code=303)


async def _case_image(request: Request, case_id: int, view: str) -> tuple[bytes, CaseView]:
    info = await _reviewer(request)
    st = _store(request)
    case = await asyncio.to_thread(st.case, case_id)
    found = None if case is None else await asyncio.to_thread(st.image, case.check_id)
    if found is None:
        raise HTTPException(404, "no image (deleted after the retention period)")
    # Personal data shown to a person: who saw which picture is on record.
    await asyncio.to_thread(st.record, who(request, info), "case.image", case_id, {"view": view})
    return found[0], case


# The face crop: the face stage's box grown by this share on every side, shown this large.
_MARGIN, _CROP_PX = 0.45, 640
Crop = Annotated[Literal["none", "face"], Query(description="face: the detected face, enlarged")]


def _face_crop(picture: Image.Image, case: CaseView) -> Image.Image:
    """The face, with some context, at ~640 px (a 4000 px upload shows its ~500 px face
    large instead of a whole photo shrunk to the column); the whole picture without a box."""
    box = ((case.face or {}).get("face") or {}).get("box")
    if not box:
        return picture
    x0, y0, x1, y1 = box
    mx, my = _MARGIN * (x1 - x0), _MARGIN * (y1 - y0)
    left, top = max(0, int(x0 - mx)), max(0, int(y0 - my))
    right, bottom = min(picture.width, int(x1 + mx)), min(picture.height, int(y1 + my))
    if right - left < 8 or bottom - top < 8:
        return picture
    crop = picture.crop((left, top, right, bottom))
    scale = _CROP_PX / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    return crop.resize(size, Image.Resampling.LANCZOS)


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    save_png(picture, out)
    return out.getvalue()


@router.get("/cases/{case_id}/image")
async def case_image(request: Request, case_id: CaseId, crop: Crop = "none"):
    data, case = await _case_image(request, case_id, "image" if crop == "none" else "face")
    if crop == "face":
        png = await asyncio.to_thread(lambda: _png(_face_crop(load_image(data).image, case)))
        response = Response(png, media_type="image/png")
    else:
        # The stored bytes are served as the type they sniff as, never as the client declared.
        response = Response(data, media_type=sniff(data) or "application/octet-stream")
    _harden(response)
    return response


@router.get("/cases/{case_id}/explain.png")
async def case_explain(request: Request, case_id: CaseId, crop: Crop = "none"):
    data, case = await _case_image(request, case_id, "heatmap")

    def render_png() -> bytes:
        decoded = load_image(data)
        shown = render(decoded.image, explain(request.app.state.detector, decoded, "case"))
        return _png(_face_crop(shown, case) if crop == "face" else shown)

    png = await request.app.state.scorer.run(render_png)
    response = Response(png, media_type="image/png")
    _harden(response)
    return response


@router.get("/static/case.js", include_in_schema=False)
async def case_script() -> Response:
    """The case page's shortcuts and zoom (no login needed: it holds no data)."""
    response = Response(_SCRIPT, media_type="text/javascript")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


_SCRIPT = (resources.files("facecheck") / "resources" / "static" / "case.js").read_bytes()
