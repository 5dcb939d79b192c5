"""The console's pages and its JSON API, as one Starlette application.

Every page checks the signed-in role on the server (403 otherwise, whatever the browser
sends); every POST from a page carries the session's CSRF token (403 otherwise); the API
under /api/ takes a bearer token instead of a cookie, so it needs none. Message content is
only ever put into templates as text (Jinja2 autoescaping), never as markup.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mailgate.filter import ScanPool, mask_field
from mailgate.filter.console.charts import daily_bars
from mailgate.filter.console.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SecurityHeaders,
    Session,
    Sessions,
    SignInLimiter,
    from_trusted_proxy,
    proxy_role,
)
from mailgate.filter.console.users import Principal, UsersFile, valid_name
from mailgate.filter.ops.config import Config
from mailgate.filter.ops.notices import SenderNotices, delete_message
from mailgate.filter.ops.review import masked, message_view, shown_entry, shown_record, trial
from mailgate.filter.ops.rulestats import (
    Daily,
    Stats,
    collect,
    daily,
    daily_from_database,
    from_database,
)
from mailgate.filter.store.fleet import audit_counts, daily_hits
from mailgate.filter.store.postgres import PostgresQuarantine
from mailgate.filter.store.quarantine import (
    STATES,
    TEXT_COUNT_LIMIT,
    HeldPage,
    HeldQuery,
    HistoryQuery,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    UnknownMessage,
    is_valid_id,
)

PAGE_SIZE = 50
HISTORY_PAGE_SIZE = 100
CHART_DAYS = 14
HISTORY_KINDS = (
    "released",
    "release_failed",
    "deleted",
    "purged",
    "original_viewed",
    "original_downloaded",
    "signed_in",
    "sign_in_failed",
    "signed_out",
)


class ReleaseOutcome(Protocol):
    @property
    def released(self) -> bool: ...
    @property
    def already(self) -> bool: ...
    @property
    def reply(self) -> str: ...


class Releaser(Protocol):
    """`relay.release.release_message` bound to the configuration, the store and the sender
    notices; blocking (it talks SMTP): run in a worker thread."""

    def __call__(
        self, qid: str, actor: str, reason: str, *, share_reason: bool = False
    ) -> ReleaseOutcome: ...


@dataclass
class Console:
    config: Config
    store: QuarantineStore
    release: Releaser
    users: UsersFile
    sessions: Sessions
    limiter: SignInLimiter
    pool: ScanPool | None = None
    notices: SenderNotices | None = None

    @property
    def notify(self) -> bool:
        """Senders are told of releases and deletes (a reviewer may share the reason)."""
        return self.notices is not None and self.notices.enabled

    @property
    def secure_cookies(self) -> bool:
        return self.config.console.tls is not None

    def reconfigure(self, fresh: Config) -> None:
        """What applies live from a re-read configuration (SIGHUP): who the trusted proxy is
        and how long new sessions last."""
        settings = {
            "trusted_proxy": fresh.console.trusted_proxy,
            "session_timeout": fresh.console.session_timeout,
        }
        console = self.config.console.model_copy(update=settings)
        self.config = self.config.model_copy(update={"console": console})
        self.sessions.timeout = console.session_timeout


def _templates() -> Environment:
    folder = Path(str(files("mailgate.filter.console").joinpath("templates")))
    env = Environment(
        loader=FileSystemLoader(folder),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["size"] = _human_size
    env.filters["field"] = mask_field  # an address or header value, masked as everywhere
    env.filters["when"] = lambda moment: moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return env


def _human_size(value: int) -> str:
    for unit in ("B", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


def client_of(request: Request, console: Console) -> str:
    """The client's address; behind the trusted proxy, the address it forwarded."""
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and from_trusted_proxy(console.config.console.trusted_proxy, peer):
        return forwarded.split(",")[-1].strip()
    return peer


def _over_https(request: Request, console: Console) -> bool:
    peer = request.client.host if request.client else ""
    return console.secure_cookies or (
        from_trusted_proxy(console.config.console.trusted_proxy, peer)
        and request.headers.get("x-forwarded-proto", "").lower() == "https"
    )


def _set_cookie(
    response: Response, request: Request, console: Console, name: str, value: str, age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_over_https(request, console),
    )


def create_app(
    config: Config,
    store: QuarantineStore,
    release: Releaser,
    pool: ScanPool | None = None,
    notices: SenderNotices | None = None,
) -> Starlette:
    """The console over `store`; `release` is the CLI's release function bound to the
    configuration; `pool` the started scan pool "Try a message" judges in (its owner stops
    it); `notices` tells senders of deletes (releases tell them through `release`)."""
    console = Console(
        config=config,
        store=store,
        release=release,
        users=UsersFile(config.console.users, config.console.password_hashing),
        sessions=Sessions(config.console.session_timeout),
        limiter=SignInLimiter(),
        pool=pool,
        notices=notices,
    )
    env = _templates()

    def render(
        request: Request, template: str, session: Session | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        page = env.get_template(template).render(
            request=request,
            me=session.principal if session else None,
            csrf=session.csrf if session else "",
            states=STATES,
            notify=console.notify,
            **values,
        )
        return HTMLResponse(page, status_code=status)

    def current(request: Request) -> Session | None:
        """The session of this request: the cookie's, or one opened for the user the trusted
        proxy names (its header is ignored from anywhere else)."""
        session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
        proxy = console.config.console.trusted_proxy
        peer = request.client.host if request.client else ""
        if proxy is None or not from_trusted_proxy(proxy, peer):
            return None if session is not None and session.via_proxy else session
        name = request.headers.get(proxy.header, "").strip()
        if not name or not valid_name(name):
            return session if session is not None and not session.via_proxy else None
        if proxy.role_header:
            role = proxy_role(request.headers.get(proxy.role_header, ""))
        else:
            role = console.users.role_of(name)
        if role is None:
            raise HTTPException(403, f"{name} has no console role")
        principal = Principal(name, role)
        if session is not None and session.via_proxy and session.principal == principal:
            return session
        request.state.new_session = console.sessions.open(
            principal, client_of(request, console), via_proxy=True
        )
        return request.state.new_session

    def finish(request: Request, response: Response) -> Response:
        new = getattr(request.state, "new_session", None)
        if new is not None:
            age = int(console.config.console.session_timeout)
            _set_cookie(response, request, console, SESSION_COOKIE, new.id, age)
        return response

    def need(request: Request, right: str = "read") -> Session:
        session = current(request)
        if session is None:
            raise HTTPException(303, "sign in", headers={"Location": "/login"})
        if not session.principal.may(right):
            raise HTTPException(403, f"your role ({session.principal.role}) may not {right}")
        return session

    async def form_of(request: Request, session: Session) -> FormData:
        form = await request.form(max_files=1, max_fields=PAGE_SIZE + 10)
        token = form.get("csrf")
        if not isinstance(token, str) or not secrets.compare_digest(token, session.csrf):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return form

    # --- signing in and out ----------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        if current(request) is not None:
            return finish(request, RedirectResponse("/", 303))
        token = secrets.token_urlsafe(32)
        response = render(request, "login.html", None, login_csrf=token, error=None)
        _set_cookie(response, request, console, LOGIN_COOKIE, token, 3600)
        return response

    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=5)
        token, cookie = form.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")
        if not isinstance(token, str) or not cookie or not secrets.compare_digest(token, cookie):
            raise HTTPException(403, "the sign-in form's CSRF token is missing or wrong")
        name = str(form.get("username", "")).strip()[:64]
        password = str(form.get("password", ""))[:1024]
        client = client_of(request, console)

        def again(status: int, error: str) -> Response:
            response = render(
                request, "login.html", None, status, login_csrf=cookie, error=error, name=name
            )
            return response

        if console.limiter.blocked(name, client):
            return again(429, "Too many attempts: wait 15 minutes and try again.")
        principal = await run_in_threadpool(console.users.authenticate, name, password)
        if principal is None:
            console.limiter.failed(name, client)
            await run_in_threadpool(
                console.store.record_activity, "sign_in_failed", name or "-", None, "", client
            )
            return again(401, "Wrong username or password.")
        session = console.sessions.open(principal, client)
        await run_in_threadpool(
            console.store.record_activity, "signed_in", principal.name, None, "", client
        )
        response = RedirectResponse("/", 303)
        _set_cookie(
            response,
            request,
            console,
            SESSION_COOKIE,
            session.id,
            int(console.config.console.session_timeout),
        )
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        session = need(request)
        await form_of(request, session)
        console.sessions.close(session.id)
        await run_in_threadpool(
            console.store.record_activity,
            "signed_out",
            session.principal.name,
            None,
            "",
            session.client,
        )
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- held mail ---------------------------------------------------------------------------

    async def held(request: Request) -> Response:
        session = need(request)
        query, shown = held_query(request.query_params)
        page = max(_int(request.query_params.get("page"), 1), 1)

        def read() -> tuple[HeldPage, dict[str, int]]:
            result = console.store.search(query, (page - 1) * PAGE_SIZE, PAGE_SIZE)
            # A text found in very many messages is counted only so far: no counts per rule.
            return result, console.store.rule_counts(query) if result.exact else {}

        result, counts = await run_in_threadpool(read)
        pages = max((result.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)

        def link(**changes: Any) -> str:
            params = {k: v for k, v in {**shown, **changes}.items() if v not in (None, "")}
            return "/?" + urlencode(params)

        return finish(
            request,
            render(
                request,
                "held.html",
                session,
                records=[shown_record(r) for r in result.records],
                count_limit=TEXT_COUNT_LIMIT,
                total=result.total,
                exact=result.exact,
                counts=counts,
                page=page,
                pages=pages,
                shown=shown,
                link=link,
                notice=request.query_params.get("notice", "")[:500],
            ),
        )

    async def bulk(request: Request) -> Response:
        session = need(request)
        form = await form_of(request, session)
        action = form.get("action")
        right = {"release": "release", "delete": "delete"}.get(str(action))
        if right is None:
            raise HTTPException(400, "choose Release or Delete")
        need(request, right)
        reason = _reason(form)
        ids = [str(v) for v in form.getlist("id") if isinstance(v, str) and is_valid_id(v)]
        if not ids:
            raise HTTPException(400, "select at least one message")
        done, failed = 0, []
        for qid in ids[:PAGE_SIZE]:
            try:
                ok, reply = await act(session, str(action), qid, reason, _share(form))
            except QuarantineError as exc:
                ok, reply = False, str(exc)
            done += ok
            if not ok:
                failed.append(f"{qid}: {reply}")
        notice = f"{action}: {done} of {len(ids)} done" + (
            "; " + "; ".join(failed) if failed else ""
        )
        back = str(form.get("back", "/"))
        back = back if back.startswith("/?") or back == "/" else "/"
        joiner = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{joiner}{urlencode({'notice': masked(notice)})}", 303)

    async def act(
        session: Session, action: str, qid: str, reason: str, share: bool = False
    ) -> tuple[bool, str]:
        """Release or delete `qid`; `share`: the sender's notice carries the reason."""
        actor = session.principal.name
        if action == "release":
            outcome = await run_in_threadpool(
                partial(console.release, qid, actor, reason, share_reason=share)
            )
            return outcome.released or outcome.already, outcome.reply
        deleted = await run_in_threadpool(
            delete_message, console.store, qid, actor, reason, console.notices, share
        )
        return deleted, "deleted" if deleted else "already deleted"

    # --- one message ---------------------------------------------------------------------------

    async def message(request: Request) -> Response:
        session = need(request)
        record = shown_record(await _record(request.path_params["qid"]))
        view = None
        if record.state != "deleted":
            try:
                raw = await run_in_threadpool(console.store.raw, record.id)
            except QuarantineError:
                raw = None
            if raw is not None:
                view = await run_in_threadpool(message_view, raw)
        rules = {}
        if console.pool is not None and console.pool.engine is not None:
            rules = {r.id: r for r in console.pool.engine.pack.rules}
        last = {e.kind: e for e in record.events}
        return finish(
            request,
            render(
                request,
                "message.html",
                session,
                record=record,
                view=view,
                rules=rules,
                released=last.get("released"),
                failed=last.get("release_failed"),
                notice=request.query_params.get("notice", "")[:500],
            ),
        )

    async def message_action(request: Request) -> Response:
        action = _action(request)
        session = need(request, action)
        form = await form_of(request, session)
        qid = (await _record(request.path_params["qid"])).id
        reason = _reason(form)
        ok, reply = await act(session, action, qid, reason, _share(form))
        notice = "" if ok else f"{action} failed: {reply}"
        suffix = f"?{urlencode({'notice': masked(notice)})}" if notice else ""
        return RedirectResponse(f"/message/{qid}{suffix}", 303)

    async def original(request: Request) -> Response:
        session = need(request, "original")
        record = await _record(request.path_params["qid"])
        download = request.query_params.get("download") == "1"
        try:
            raw = await run_in_threadpool(console.store.raw, record.id)
        except QuarantineError as exc:
            raise HTTPException(404, str(exc)) from None
        await run_in_threadpool(
            console.store.record_activity,
            "original_downloaded" if download else "original_viewed",
            session.principal.name,
            record.id,
            "",
            session.client,
        )
        if download:
            return Response(
                raw,
                media_type="application/octet-stream",
                headers={"Content-Disposition": f'attachment; filename="{record.id}.eml"'},
            )
        # text/plain under nosniff and the CSP: the browser shows it, never interprets it.
        return Response(raw, media_type="text/plain; charset=utf-8")

    async def _record(qid: str) -> QuarantineRecord:
        if not is_valid_id(qid):
            raise HTTPException(404, "no such message")
        try:
            return await run_in_threadpool(console.store.get, qid)
        except UnknownMessage:
            raise HTTPException(404, "no such message") from None

    # --- history ------------------------------------------------------------------------------

    def history_query(request: Request) -> tuple[HistoryQuery, dict[str, str]]:
        params = request.query_params
        shown = {
            k: params.get(k, "").strip()[:200] for k in ("kind", "actor", "since", "until", "q")
        }
        query = HistoryQuery(
            kind=shown["kind"] if shown["kind"] in HISTORY_KINDS else None,
            actor=shown["actor"] or None,
            since=_date(shown["since"]),
            until=_date(shown["until"], end=True),
            text=shown["q"] or None,
        )
        return query, shown

    async def history(request: Request) -> Response:
        session = need(request)
        query, shown = history_query(request)
        page = max(_int(request.query_params.get("page"), 1), 1)
        result = await run_in_threadpool(
            console.store.history, query, (page - 1) * HISTORY_PAGE_SIZE, HISTORY_PAGE_SIZE
        )
        pages = max((result.total + HISTORY_PAGE_SIZE - 1) // HISTORY_PAGE_SIZE, 1)
        params = {k: v for k, v in shown.items() if v}
        return finish(
            request,
            render(
                request,
                "history.html",
                session,
                entries=[shown_entry(e) for e in result.entries],
                total=result.total,
                page=page,
                pages=pages,
                shown=shown,
                kinds=HISTORY_KINDS,
                query_string=urlencode(params),
            ),
        )

    async def history_csv(request: Request) -> Response:
        need(request)
        query, _ = history_query(request)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["time", "kind", "actor", "node", "id", "reason", "detail"])
        offset = 0
        while True:
            page = await run_in_threadpool(console.store.history, query, offset, 1000)
            for e in map(shown_entry, page.entries):
                row = [e.time.isoformat(), e.kind, e.actor, e.node, e.qid or "", e.reason, e.detail]
                writer.writerow([_csv_cell(cell) for cell in row])
            offset += len(page.entries)
            if not page.entries or offset >= page.total:
                break
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="mailgate-history.csv"'},
        )

    async def purge(request: Request) -> Response:
        session = need(request, "purge")
        form = await form_of(request, session)
        days = _int(str(form.get("days", "")), -1)
        if days < 0:
            raise HTTPException(400, "give the age in days (0 or more)")
        count = await run_in_threadpool(
            console.store.purge, timedelta(days=days), session.principal.name
        )
        notice = f"purged {count} message(s) older than {days} day(s)"
        return RedirectResponse(f"/history?{urlencode({'notice': notice})}", 303)

    # --- rules --------------------------------------------------------------------------------

    async def rules_page(request: Request) -> Response:
        session = need(request)
        engine = console.pool.engine if console.pool is not None else None
        stats = await run_in_threadpool(_rule_stats, config, console.store)
        charts = {}
        if stats is not None:
            per_day, totals = stats
            for rule, counts in per_day.hits.items():
                charts[rule] = daily_bars(counts, per_day.days, f"hits of {rule} per day")
        else:
            per_day, totals = None, None
        return finish(
            request,
            render(
                request,
                "rules.html",
                session,
                engine=engine,
                charts=charts,
                per_day=per_day,
                totals=totals,
                audit_path=config.audit.path,
                empty_chart=daily_bars([0] * CHART_DAYS, _days(), "no hits"),
            ),
        )

    # --- try a message --------------------------------------------------------------------------

    async def try_page(request: Request) -> Response:
        session = need(request)
        return finish(request, render(request, "try.html", session, result=None, error=None))

    async def try_message(request: Request) -> Response:
        session = need(request)
        limit = config.relay.max_message_size
        if int(request.headers.get("content-length") or 0) > limit + 64 * 1024:
            raise HTTPException(413, f"messages up to {_human_size(limit)} can be tried")
        form = await form_of(request, session)
        upload = form.get("message")
        if not isinstance(upload, UploadFile):
            return render(request, "try.html", session, 400, result=None, error="Choose a file.")
        raw = await upload.read(limit + 1)
        if len(raw) > limit:
            raise HTTPException(413, f"messages up to {_human_size(limit)} can be tried")
        if console.pool is None:
            raise HTTPException(503, "the rules engine is not running in this console")
        result = await trial(console.pool, raw, upload.filename or "message.eml")
        return render(request, "try.html", session, result=result, error=None)

    # --- the JSON API ---------------------------------------------------------------------------

    def api_principal(request: Request, right: str = "read") -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        principal = None
        if scheme.lower() == "bearer" and token.strip():
            principal = console.users.token_principal(token.strip())
        if principal is None:
            raise HTTPException(401, "a valid token is needed", {"WWW-Authenticate": "Bearer"})
        if not principal.may(right):
            raise HTTPException(403, f"the token's role ({principal.role}) may not {right}")
        return principal

    async def api_list(request: Request) -> Response:
        api_principal(request)
        query, _ = held_query(request.query_params)
        offset = max(_int(request.query_params.get("offset"), 0), 0)
        limit = min(max(_int(request.query_params.get("limit"), PAGE_SIZE), 1), 500)
        page = await run_in_threadpool(console.store.search, query, offset, limit)
        messages = [shown_record(r).to_dict() for r in page.records]
        return JSONResponse({"total": page.total, "exact": page.exact, "messages": messages})

    async def api_show(request: Request) -> Response:
        api_principal(request)
        record = await _record(request.path_params["qid"])
        return JSONResponse(shown_record(record).to_dict())

    async def api_action(request: Request) -> Response:
        action = _action(request)
        principal = api_principal(request, action)
        qid = (await _record(request.path_params["qid"])).id
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HTTPException(400, 'the body must be JSON: {"reason": "..."}') from None
        body = body if isinstance(body, dict) else {}
        reason = str(body.get("reason", "")).strip()
        if not reason:
            raise HTTPException(400, "a reason is required")
        session = Session("", principal, "", 0.0, client_of(request, console))
        try:
            share = body.get("share_reason") is True
            ok, reply = await act(session, action, qid, reason[:2000], share)
        except QuarantineError as exc:
            raise HTTPException(409, str(exc)) from None
        record = await _record(qid)
        return JSONResponse(
            {"id": qid, "ok": ok, "state": record.state, "reply": masked(reply)},
            status_code=200 if ok else 502,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 303 and exc.headers:
            return RedirectResponse(exc.headers["Location"], 303)
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"error": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
        return render(
            request,
            "error.html",
            session,
            exc.status_code,
            code=exc.status_code,
            detail=exc.detail,
        )

    static = Path(str(files("mailgate.filter.console").joinpath("static")))
    app = Starlette(
        routes=[
            Route("/", held),
            Route("/login", login_page),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/bulk", bulk, methods=["POST"]),
            Route("/message/{qid}", message),
            Route("/message/{qid}/original", original),
            Route("/message/{qid}/{action:str}", message_action, methods=["POST"]),
            Route("/history", history),
            Route("/history.csv", history_csv),
            Route("/purge", purge, methods=["POST"]),
            Route("/rules", rules_page),
            Route("/try", try_page),
            Route("/try", try_message, methods=["POST"]),
            Route("/api/messages", api_list),
            Route("/api/messages/{qid}", api_show),
            Route("/api/messages/{qid}/{action:str}", api_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app


def held_query(params: Any) -> tuple[HeldQuery, dict[str, str]]:
    """The list's query from the page's (or the API's) parameters, and the parameters as
    shown back in the filter form. The state defaults to held; "any" lists every state."""
    keys = ("state", "rule", "sender", "recipient", "domain", "since", "until", "q", "sort")
    shown = {k: str(params.get(k, "")).strip()[:200] for k in keys}
    state = shown["state"] or "held"
    shown["state"] = state
    query = HeldQuery(
        state=state if state in STATES else None,
        rule=shown["rule"] or None,
        sender=shown["sender"] or None,
        recipient=shown["recipient"] or None,
        domain=shown["domain"] or None,
        since=_date(shown["since"]),
        until=_date(shown["until"], end=True),
        text=shown["q"] or None,
        newest_first=shown["sort"] != "oldest",
    )
    return query, shown


def _action(request: Request) -> str:
    action = request.path_params["action"]
    if action not in ("release", "delete"):
        raise HTTPException(404, "no such action")
    return action


def _reason(form: FormData) -> str:
    reason = str(form.get("reason", "")).strip()
    if not reason:
        raise HTTPException(400, "a reason is required")
    return reason[:2000]


def _share(form: FormData) -> bool:
    """The reviewer ticked "tell the sender this reason"."""
    return form.get("share") == "1"


def _int(value: str | None, default: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _date(value: str, end: bool = False) -> datetime | None:
    """'2024-05-01' (a day, in UTC; `end`: the day after, so the day is included) or an ISO
    time; None when empty or unreadable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(value) == 10:
        moment += timedelta(days=1)
    return moment


def _csv_cell(value: str) -> str:
    """A cell a spreadsheet would run as a formula is written as text."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _days() -> list[Any]:
    today = datetime.now(UTC).date()
    return [today - timedelta(days=CHART_DAYS - 1 - n) for n in range(CHART_DAYS)]


def _rule_stats(config: Config, store: QuarantineStore) -> tuple[Daily, Stats] | None:
    """Hits per rule and day over the last 14 days, and the totals (with what monitor rules
    would have done): the fleet's, from its database, when the console reads one; else this
    gateway's, from its audit file; None when that log goes to stdout."""
    since = datetime.now(UTC) - timedelta(days=CHART_DAYS)
    if isinstance(store, PostgresQuarantine):
        return (
            daily_from_database(daily_hits(store.db, _days()[0]), CHART_DAYS),
            from_database(audit_counts(store.db, since)),
        )
    path = config.audit.path
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            per_day = daily(lines, CHART_DAYS)
        with open(path, encoding="utf-8", errors="replace") as lines:
            totals = collect(lines, since)
    except FileNotFoundError:
        return daily([], CHART_DAYS), collect([], since)
    return per_day, totals
