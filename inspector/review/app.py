"""The review page: a Starlette app with Jinja2 templates, kept live by htmx (vendored, static/).

Pages and fragments:
  GET  /                       the page: filters, counts, the newest items
  GET  /items?before=ID        the next page of older items (keyset pagination)
  GET  /items/newer?after=ID   items journaled since the newest one shown (polled twice a second); 204 when none
  POST /items/{id}/review      label an item: defect | false_alarm | unsure, with an optional note
  GET  /counts                 per source and per model: reviewed, confirmed, false alarms, precision
  GET  /evidence/{name}        an evidence picture, only from the evidence folder
  POST /promote                put the shadow candidate in the active model's place (logged-in users only;
                               refused when it misses a confirmed defect the active model caught)
  GET|POST /login, POST /logout   when a users file is configured
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import InspectorError
from .frames import keep_reviewed_frame
from .security import COOKIE, SECURITY_HEADERS, LoginThrottle, Session, Sessions, check_password, read_users, same_origin
from .store import LABELS, STATES, VERDICTS, ItemFilter, ReviewStore

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
EVIDENCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.png$")
DEFAULT_REVIEWER = "operator"
MAX_FORM_BYTES = 16_384  # a label, a note of 2,000 characters, a token: far below this

OnReview = Callable[[dict, str], None]  # (item after the review, label)


@dataclass(frozen=True)
class Promotion:
    """What the page's promote button does: the shadow candidate replaces the active model file (the
    daemon hot-swaps it), checked against the confirmed defects in `reviews` (inspector.review.promote)."""

    candidate: Path
    candidate_version: str  # as loaded by the shadow sink at the daemon's start
    active: Path
    reviews: Path


def _time(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _parse_time(text: str | None, field: str) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"{field}: expected a date and time like 2026-12-03T08:30") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # the page shows and takes UTC
    return moment.timestamp()


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and value not in allowed:
        raise HTTPException(400, f"{name}: one of {', '.join(allowed)}")
    return value


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{name}: expected an integer") from None


def _filters(request: Request) -> tuple[ItemFilter, dict]:
    """The filter in effect and its query parameters (carried by every link and poll of the page)."""
    query = request.query_params
    selection = ItemFilter(source=query.get("source") or None, verdict=_choice(request, "verdict", VERDICTS),
                           state=_choice(request, "state", STATES), since=_parse_time(query.get("since"), "since"),
                           until=_parse_time(query.get("until"), "until"), model_version=query.get("model") or None)
    params = {name: query[name] for name in ("source", "verdict", "state", "since", "until", "model") if query.get(name)}
    return selection, params


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response; pages are never cached."""

    def __init__(self, app, tls: bool):
        self.app = app
        self.tls = tls

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
                if self.tls:
                    headers["strict-transport-security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ReviewPage:
    def __init__(self, store: ReviewStore, evidence_dir: Path | None, page_size: int = 40,
                 users_file: Path | None = None, session_hours: float = 12.0, tls: bool = False,
                 on_review: OnReview | None = None, title: str = "inspector review",
                 promotion: Promotion | None = None):
        self.store = store
        self.evidence_dir = evidence_dir.resolve() if evidence_dir is not None else None
        self.page_size = page_size
        self.users = read_users(users_file) if users_file is not None else None
        self.sessions = Sessions(session_hours * 3600)
        self.throttle = LoginThrottle()
        self.tls = tls
        self.on_review = on_review or (lambda item, label: None)
        self.title = title
        self.promotion = promotion
        self._promoting = threading.Lock()
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(default=True), auto_reload=False)
        self.templates.filters["utc"] = _time
        self.templates.globals.update(labels=LABELS, states=STATES, verdicts=VERDICTS)

    # -- sessions, login, CSRF ------------------------------------------------------------------

    def _session(self, request: Request) -> tuple[Session, bool]:
        """The request's session, or a new one (True: its cookie must be set on the response). Only the
        pages a browser opens (the list, the login form) start sessions: polls never pile them up."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            return session, False
        return self.sessions.new(), True

    def _set_cookie(self, response: Response, session: Session) -> Response:
        response.set_cookie(COOKIE, session.id, max_age=int(self.sessions.lifetime_s), httponly=True,
                            samesite="strict", secure=self.tls, path="/")
        return response

    def _reader(self, request: Request) -> None:
        """Reads need a logged-in session when there are users; on loopback without users, nothing."""
        if self.users is None:
            return
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None or session.user is None:
            raise HTTPException(401, "log in first")

    def _changer(self, request: Request) -> Session:
        """Changes need an existing session (its CSRF token is checked next), logged in when there are users."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(403, "no session (the inspector restarted?): reload the page")
        if self.users is not None and session.user is None:
            raise HTTPException(401, "log in first")
        return session

    async def _check_change(self, request: Request, session: Session) -> dict:
        """A state change: same origin and the session's CSRF token, or 403. Returns the form."""
        scheme = "https" if self.tls else "http"
        if not same_origin(request.headers.get("origin"), request.headers.get("host"), scheme):
            raise HTTPException(403, "cross-origin request refused")
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
            raise HTTPException(413, f"a form of at most {MAX_FORM_BYTES} bytes, with its Content-Length")
        form = await request.form()
        token = request.headers.get("x-csrf-token") or form.get("csrf_token") or ""
        if not hmac.compare_digest(str(token), session.csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return dict(form)

    def _reviewer(self, session: Session, form: dict) -> str:
        if session.user is not None:
            return session.user  # logged in: the name is the account's, not what the form says
        name = str(form.get("reviewer") or "").strip()[:64]
        return name or DEFAULT_REVIEWER

    def _render(self, name: str, **context) -> str:
        return self.templates.get_template(name).render(**context)

    # -- routes ---------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        if self.users is not None:
            known = self.sessions.get(request.cookies.get(COOKIE))
            if known is None or known.user is None:
                return RedirectResponse("/login", 303)  # the login form starts the session
        session, fresh = self._session(request)
        selection, params = _filters(request)
        items = self.store.items(selection, limit=self.page_size + 1)
        html = self._render("page.html", title=self.title, session=session, users=self.users is not None,
                            params=params, query=urlencode(params), sources=self.store.sources(),
                            items=items[:self.page_size], more=len(items) > self.page_size,
                            reviews=self.store.latest_reviews([i["id"] for i in items]),
                            newest=items[0]["id"] if items else 0, counts=self._counts(),
                            promotion=self._promotion_view())
        response = HTMLResponse(html)
        return self._set_cookie(response, session) if fresh else response

    async def older(self, request: Request) -> Response:
        self._reader(request)
        selection, params = _filters(request)
        items = self.store.items(selection, before=_int(request, "before"), limit=self.page_size + 1)
        shown = items[:self.page_size]
        return HTMLResponse(self._render("older.html", items=shown, more=len(items) > self.page_size,
                                         reviews=self.store.latest_reviews([i["id"] for i in shown]),
                                         query=urlencode(params)))

    async def newer(self, request: Request) -> Response:
        self._reader(request)
        selection, params = _filters(request)
        after = _int(request, "after") or 0
        items = self.store.items(selection, after=after, limit=self.page_size)
        if not items:
            return Response(status_code=204)
        return HTMLResponse(self._render("newer.html", items=items, reviews={}, newest=items[0]["id"],
                                         query=urlencode(params)))

    async def review(self, request: Request) -> Response:
        session = self._changer(request)
        form = await self._check_change(request, session)
        item_id = int(request.path_params["item_id"])
        label = str(form.get("label", ""))
        if label not in LABELS:
            raise HTTPException(400, f"label: one of {', '.join(LABELS)}")
        note = str(form.get("note") or "").strip()[:2000]
        try:
            item = self.store.add_review(item_id, label, self._reviewer(session, form), note)
        except KeyError:
            raise HTTPException(404, f"no review item {item_id}") from None
        item = keep_reviewed_frame(self.store, item)
        self.on_review(item, label)
        return HTMLResponse(self._render("card.html", item=item, reviews=self.store.latest_reviews([item_id])))

    def _promotion_view(self) -> dict | None:
        """The candidate named on the page, or None when no shadow candidate is configured."""
        if self.promotion is None:
            return None
        return {"name": self.promotion.candidate.name, "version": self.promotion.candidate_version,
                "active": str(self.promotion.active)}

    async def promote(self, request: Request) -> Response:
        """The promote button: only for a logged-in user (a users file is configured), never forced."""
        if self.promotion is None:
            raise HTTPException(404, "no shadow candidate is configured (shadow: in the daemon config)")
        session = self._changer(request)
        if self.users is None:
            raise HTTPException(403, "promoting from the page needs a login (review.users_file); on this machine: "
                                     f"inspector promote {self.promotion.candidate} --to {self.promotion.active} "
                                     f"--reviews {self.promotion.reviews}")
        await self._check_change(request, session)
        from .promote import promote

        if not self._promoting.acquire(blocking=False):  # a double click must not promote twice at once
            raise HTTPException(409, "a promotion is already running")
        try:
            check = await run_in_threadpool(promote, self.promotion.candidate, self.promotion.active,
                                            self.promotion.reviews)
        except InspectorError as exc:
            log.warning("review page: %s asked to promote %s: refused (%s)", session.user, self.promotion.candidate, exc)
            raise HTTPException(409, str(exc)) from None
        except OSError as exc:  # the model folder is full or not writable: said on the page, the active file intact
            log.error("review page: promoting %s failed: %s", self.promotion.candidate, exc)
            raise HTTPException(500, f"promotion failed: {exc.strerror or exc} ({exc.filename or self.promotion.active})") from None
        finally:
            self._promoting.release()
        log.warning("review page: %s promoted %s to %s", session.user, self.promotion.candidate, self.promotion.active)
        kept = f"; it catches all {check.confirmed_caught} confirmed defect(s) the active model caught" if check else ""
        return HTMLResponse(self._render("promoted.html", candidate=self.promotion.candidate.name, kept=kept,
                                         user=session.user))

    async def counts(self, request: Request) -> Response:
        self._reader(request)
        return HTMLResponse(self._render("counts.html", counts=self._counts()))

    def _counts(self) -> dict:
        return {"source": self.store.counts("source"), "model_version": self.store.counts("model_version")}

    async def evidence(self, request: Request) -> Response:
        self._reader(request)
        name = request.path_params["name"]
        if self.evidence_dir is None or not EVIDENCE_NAME.match(name):
            raise HTTPException(404, "no such evidence")
        path = (self.evidence_dir / name).resolve()
        if path.parent != self.evidence_dir or not path.is_file():
            raise HTTPException(404, "no such evidence")
        return FileResponse(path, media_type="image/png")

    async def login_form(self, request: Request) -> Response:
        if self.users is None:
            return RedirectResponse("/", 303)
        session, fresh = self._session(request)
        response = HTMLResponse(self._render("login.html", title=self.title, session=session, error=None))
        return self._set_cookie(response, session) if fresh else response

    async def login(self, request: Request) -> Response:
        if self.users is None:
            return RedirectResponse("/", 303)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(403, "no session: reload the login page")
        form = await self._check_change(request, session)
        client = request.client.host if request.client else "?"
        if self.throttle.blocked(client):
            raise HTTPException(429, "too many failed logins: wait a few minutes")
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        stored = self.users.get(name)
        if stored is None or not check_password(password, stored):
            self.throttle.failed(client)
            log.warning("review page: failed login for %r from %s", name[:64], client)
            return HTMLResponse(self._render("login.html", title=self.title, session=session,
                                             error="wrong user name or password"), status_code=401)
        self.throttle.succeeded(client)
        self.sessions.end(session.id)
        fresh = self.sessions.new(user=name)  # a new id at login: a planted cookie cannot be logged in
        return self._set_cookie(RedirectResponse("/", 303), fresh)

    async def logout(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(403, "no session: reload the page")
        await self._check_change(request, session)
        self.sessions.end(session.id)
        response = RedirectResponse("/login" if self.users is not None else "/", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def app(self) -> Starlette:
        routes = [Route("/", self.page), Route("/items", self.older), Route("/items/newer", self.newer),
                  Route("/items/{item_id:int}/review", self.review, methods=["POST"]),
                  Route("/counts", self.counts), Route("/evidence/{name}", self.evidence),
                  Route("/login", self.login_form, methods=["GET"]), Route("/login", self.login, methods=["POST"]),
                  Route("/logout", self.logout, methods=["POST"]), Route("/promote", self.promote, methods=["POST"]),
                  Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
        app = Starlette(routes=routes, exception_handlers={HTTPException: self._error})
        return SecurityHeaders(app, self.tls)

    async def _error(self, request: Request, exc: HTTPException) -> Response:
        return Response(f"{exc.detail}\n", status_code=exc.status_code, media_type="text/plain")
