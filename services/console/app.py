"""The web console at /console: pages rendered on the server from the same functions the
JSON API uses, with a little JavaScript on top (validation as you type, a job's progress).

Every page works without JavaScript; every form carries the session's CSRF token; admin
controls are left out of viewers' pages and refused by the server all the same.
"""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import asyncio
import logging
import pathlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import orjson
import yaml
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.ruleset import Stage
from scoring_service.diff import around_changes, side_by_side
from scoring_service.ruleset_files import (
    MAX_DOCUMENT_BYTES,
    RuleSetInvalid,
    load_document,
    problem_lines,
)
from scoring_service.simulation import STAGES
from services import challenger, queries, rulesets
from services.auth import Principal
from services.bootstrap import Container
from services.console import charts
from services.console.journeys import JOURNEYS
from services.console.session import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Forbidden,
    SignInNeeded,
    Visitor,
    anonymous,
    check_csrf,
    client_of,
    sign_in_refusal,
    visitor_of,
)
from services.db import UNAVAILABLE, driver
from services.http.accounts import account_detail, account_list
from services.http.common import MALFORMED, ApiError
from services.http.leads import funnel_figures, lead_detail, lead_history, lead_page
from services.http.rulesets import (
    activate_version,
    challenger_status,
    job_detail,
    propose_version,
    publish_ruleset,
    ruleset_detail,
    ruleset_diff,
    ruleset_list,
    run_simulation,
    start_challenge,
    start_impact,
    stop_challenge,
)
from services.review import review_report
from services.sessions import SignInRefused

log = logging.getLogger(__name__)

HERE = pathlib.Path(__file__).parent
ACCOUNT_STAGES = ("target", "engaged", "mqa", "opportunity", "customer", "disqualified")
PAGE_SIZE = 50
# A pasted journey: at most this many events (the API's simulation limit).
MAX_JOURNEY_EVENTS = 10_000
TIMELINE_EVENTS = 200
WINDOWS = {"7": 7, "30": 30, "90": 90, "365": 365}


def console_app(container: Container, prefix: str) -> FastAPI:
    """The console for one running instance, to be mounted at `prefix`."""
    settings = container.settings
    sessions = container.sessions
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters.update(
        segment=lambda value: quote(str(value), safe=""),
        when=_when,
        num=_num,
        pct=lambda v: NONE if v is None else f"{v * 100:.1f}%",
        duration=_duration,
    )
    env.globals.update(base=prefix, stages=STAGES, account_stages=ACCOUNT_STAGES)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        started = time.perf_counter()
        # Made here, so that what the page learns about its visitor is seen below.
        request.state.visitor, request.state.looked_up = None, False
        response = await call_next(request)
        visitor = request.state.visitor
        if isinstance(visitor, Visitor) and visitor.new_csrf_cookie:
            set_cookie(response, CSRF_COOKIE, visitor.csrf, max_age=None)
        # Server-Timing lets anyone (and the benchmark) read the time spent here.
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith(f"{prefix}/static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def set_cookie(response: Response, name: str, value: str, *, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=prefix,
            httponly=True,
            samesite="strict",
            secure=settings.console_secure_cookie,
        )

    async def user_of(request: Request) -> Principal:
        user = (await visitor_of(request, sessions)).user
        if user is None:
            raise SignInNeeded()
        return user

    async def admin_of(request: Request) -> Principal:
        user = await user_of(request)
        if not user.may("admin"):
            raise Forbidden("Only admins may do this. Your token has the viewer role.")
        return user

    async def posted(request: Request, *, admin: bool) -> tuple[Principal, Any]:
        """A form post: who sent it (admins only where `admin`), its fields, CSRF checked."""
        user = await admin_of(request) if admin else await user_of(request)
        form = await request.form(max_files=0, max_fields=20)
        offered = form.get("csrf")
        visitor = await visitor_of(request, sessions)
        check_csrf(visitor, offered if isinstance(offered, str) else None)
        return user, form

    def page(
        request: Request, name: str, user: Principal | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {
                "user": user,
                "is_admin": user is not None and user.may("admin"),
                "csrf": anonymous(request, sessions).csrf,
                "open_console": anonymous(request, sessions).open_console,
                "notice": request.query_params.get("notice"),
                **context,
            },
            status_code=status,
        )

    def to(path: str, **params: Any) -> RedirectResponse:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return RedirectResponse(f"{prefix}{path}" + (f"?{query}" if query else ""), 303)

    # -- errors, in words ----------------------------------------------------------------------

    def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
        # The visitor as far as this request got (the database may be what failed).
        user = anonymous(request, sessions).user
        return page(request, "error.html", user, status, title=title, detail=detail)

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, _: SignInNeeded) -> Response:
        if request.method == "GET":
            return to("/signin", next=request.url.path)
        return error_page(request, 401, "Please sign in", "Your session has ended. Sign in again.")

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return error_page(request, 403, "Not allowed", exc.detail)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        detail = exc.detail
        if isinstance(detail, list):
            detail = "; ".join(f"{p.get('loc')}: {p.get('msg')}" for p in detail)
        return error_page(request, exc.status, _TITLES.get(exc.status, "Cannot do that"), detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in exc.errors()
        )
        return error_page(request, 400, "That address has a value this page cannot use", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        words = {404: "There is no such page.", 405: "That page does not take this method."}
        return error_page(
            request,
            exc.status_code,
            "Not found" if exc.status_code == 404 else "Cannot do that",
            words.get(exc.status_code, str(exc.detail)),
        )

    async def _expected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, MALFORMED):
            return error_page(request, 400, "Cannot use that", "The request could not be stored.")
        return error_page(
            request, 503, "The database is away", "The database is unavailable; try again."
        )

    # Registered by class, these are answered where they happen; only the catch-all below
    # goes through Starlette's last-resort middleware, which re-raises after answering.
    for kind in (*MALFORMED, *UNAVAILABLE):
        app.add_exception_handler(kind, _expected)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unexpected error in console %s %s", request.method, request.url.path, exc_info=exc
        )
        return error_page(
            request,
            500,
            "Something went wrong",
            "The console could not show this page. The error is in the service's log.",
        )

    # -- signing in and out --------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> Response:
        await user_of(request)
        return to("/leads")

    @app.get("/signin")
    async def signin_form(request: Request, next: str = "") -> Response:
        return page(request, "signin.html", None, next=_local_path(next, prefix))

    @app.post("/signin")
    async def signin(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=5)
        offered, token, after = form.get("csrf"), form.get("token"), form.get("next")
        visitor = anonymous(request, sessions)
        check_csrf(visitor, offered if isinstance(offered, str) else None)
        target = _local_path(after if isinstance(after, str) else "", prefix) or f"{prefix}/leads"
        if visitor.open_console:  # nothing to sign in to
            return RedirectResponse(target, 303)
        if not isinstance(token, str) or not token.strip() or len(token) > 200:
            return page(request, "signin.html", None, 400, problem="Paste your API token.", next="")
        try:
            secret, session = await sessions.sign_in(
                token.strip(),
                client=client_of(request),
                user_agent=request.headers.get("user-agent"),
            )
        except SignInRefused as exc:
            problem = sign_in_refusal(exc.reason)
            return page(request, "signin.html", None, 401, problem=problem, next="")
        log.info("console sign-in by %s (%s)", session.principal.name, session.principal.role)
        response = RedirectResponse(target, 303)
        lifetime = int(settings.console_session_hours * 3600)
        set_cookie(response, SESSION_COOKIE, secret, max_age=lifetime)
        return response

    @app.post("/signout")
    async def signout(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=5)
        offered = form.get("csrf")
        visitor = await visitor_of(request, sessions)
        check_csrf(visitor, offered if isinstance(offered, str) else None)
        await sessions.sign_out(request.cookies.get(SESSION_COOKIE, ""))
        response = to("/signin")
        response.delete_cookie(SESSION_COOKIE, path=prefix)
        return response

    # -- sessions (admins) ----------------------------------------------------------------------

    @app.get("/sessions")
    async def sessions_page(request: Request) -> Response:
        user = await admin_of(request)
        mine = (await visitor_of(request, sessions)).session
        return page(
            request,
            "sessions.html",
            user,
            sessions=await sessions.listing(),
            mine=mine.id if mine else None,
            idle_minutes=settings.console_idle_minutes,
            lifetime_hours=settings.console_session_hours,
        )

    @app.post("/sessions/{session_id}/end")
    async def end_session(request: Request, session_id: Annotated[str, _SESSION_ID]) -> Response:
        user, _ = await posted(request, admin=True)
        ended = await sessions.end(session_id, by=user.name)
        return to("/sessions", notice="Session ended." if ended else "That session had ended.")

    @app.post("/sessions/end-token")
    async def end_token_sessions(request: Request) -> Response:
        user, form = await posted(request, admin=True)
        name = form.get("token_name")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ApiError(422, "invalid_request", "Name the token whose sessions to end.")
        ended = await sessions.end_all(token_name=name, by=user.name)
        return to("/sessions", notice=f"Ended {ended} session(s) of token {name}.")

    # -- rules ---------------------------------------------------------------------------------

    @app.get("/rules")
    async def rules(request: Request) -> Response:
        user = await user_of(request)
        versions = await ruleset_list(container)
        active = next((v["version"] for v in versions if v["active"]), None)
        previous = None
        if active is not None:
            async with container.db.connect() as conn:
                previous = await queries.previous_active(await driver(conn), active)
        return page(
            request,
            "rules.html",
            user,
            versions=versions,
            active=active,
            previous=previous,
            challenger=await challenger_status(container),
        )

    @app.get("/rules/new")
    async def editor(
        request: Request, start: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        user = await admin_of(request)
        source = await ruleset_detail(container, start)
        return page(
            request,
            "editor.html",
            user,
            text=_yaml(source["document"]),
            start=source["version"],
            problems=[],
            comment="",
        )

    @app.post("/rules/validate")
    async def validate(request: Request) -> Response:
        """For the editor's validation as you type: the problems, each with its line."""
        await admin_of(request)
        check_csrf(await visitor_of(request, sessions), request.headers.get("x-csrf-token"))
        body = await request.body()
        if len(body) > MAX_DOCUMENT_BYTES:
            return JSONResponse(
                {
                    "problems": [
                        {
                            "loc": "document",
                            "line": None,
                            "msg": f"larger than {MAX_DOCUMENT_BYTES} bytes",
                        }
                    ]
                }
            )
        text = body.decode("utf-8", errors="replace")
        return JSONResponse(await asyncio.to_thread(_check, text))

    @app.post("/rules")
    async def publish(request: Request) -> Response:
        user, form = await posted(request, admin=True)
        text, comment = form.get("document"), form.get("comment")
        text = text if isinstance(text, str) else ""
        comment = comment.strip()[:1000] if isinstance(comment, str) and comment.strip() else None
        try:
            published = await publish_ruleset(
                container, text.encode(), by=user.name, comment=comment
            )
        except ApiError as exc:
            if exc.status != 422:
                raise
            problems = await asyncio.to_thread(problem_lines, text, exc.detail)
            start = form.get("start")
            return page(
                request,
                "editor.html",
                user,
                422,
                text=text,
                problems=problems,
                comment=comment or "",
                start=start if isinstance(start, str) else "",
            )
        return to(
            f"/rules/{published['version']}",
            notice=f"Published version "
            f"{published['version']}. It is not live until you activate it.",
        )

    @app.get("/rules/{version}")
    async def version_page(request: Request, version: Annotated[int, _VERSION]) -> Response:
        user = await user_of(request)
        detail = await ruleset_detail(container, version)
        return page(
            request,
            "version.html",
            user,
            version=detail,
            challenger=await challenger_status(container),
            text=_yaml(detail["document"]),
            journeys=list(JOURNEYS),
        )

    @app.get("/rules/{version}/diff")
    async def diff(
        request: Request,
        version: Annotated[int, _VERSION],
        against: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
        full: bool = False,
    ) -> Response:
        user = await user_of(request)
        base_version = await ruleset_detail(container, against)
        this = await ruleset_detail(container, version)
        changes = await ruleset_diff(container, base_version["version"], version)
        every_row = side_by_side(_yaml(base_version["document"]), _yaml(this["document"]))
        rows = every_row if full else around_changes(every_row)
        return page(
            request,
            "diff.html",
            user,
            old=base_version,
            new=this,
            changes=changes,
            rows=rows,
            changed=sum(1 for row in every_row if row[0] != "same"),
            full=full,
            against=against,
        )

    @app.post("/rules/{version}/activate")
    async def activate(request: Request, version: Annotated[int, _VERSION]) -> Response:
        user, form = await posted(request, admin=True)
        await activate_version(container, version, by=user.name)
        what = "Rolled back to" if form.get("rollback") else "Activated"
        return to("/rules", notice=f"{what} version {version}: live scoring uses it now.")

    @app.post("/rules/{version}/challenge")
    async def challenge(request: Request, version: Annotated[int, _VERSION]) -> Response:
        user, form = await posted(request, admin=True)
        if form.get("stop"):
            await stop_challenge(container, version, by=user.name)
            return to(f"/rules/{version}", notice=f"Version {version} is no longer the challenger.")
        started = await start_challenge(container, version, by=user.name)
        return to(
            "/rules",
            notice=f"Version {version} now scores every live event next to the active version "
            f"and publishes nothing; {started['leads_live']} existing leads are being replayed "
            "under it.",
        )

    @app.post("/rules/{version}/propose")
    async def propose(request: Request, version: Annotated[int, _VERSION]) -> Response:
        user, form = await posted(request, admin=True)
        days, target = _days(form, 365.0), form.get("target")
        if target not in ("won", "qualified"):
            raise ApiError(422, "invalid_request", "Learn from won or qualified outcomes.")
        until = datetime.now(UTC)
        result = await propose_version(
            container,
            version,
            by=user.name,
            since=until - timedelta(days=days),
            until=until,
            target=target,
        )
        return to(
            f"/rules/{result['version']}",
            notice=f"Proposed version {result['version']} from {result['samples']} decided "
            f"leads: held-out AUC {result['auc_old']:.3f} (version {version}) -> "
            f"{result['auc_proposed']:.3f}. Judge it with an impact report or as a challenger "
            "before activating it.",
        )

    @app.post("/rules/{version}/simulate")
    async def simulate(request: Request, version: Annotated[int, _VERSION]) -> Response:
        user, form = await posted(request, admin=False)
        detail = await ruleset_detail(container, version)
        picked, pasted = form.get("journey"), form.get("events")
        if isinstance(pasted, str) and pasted.strip():
            events, problem = _journey(pasted)
        elif isinstance(picked, str) and picked in JOURNEYS:
            events, problem = JOURNEYS[picked], None
        else:
            events, problem = [], "Pick a journey or paste events, one JSON object per line."
        if problem is not None:
            return page(
                request,
                "version.html",
                user,
                422,
                version=detail,
                text=_yaml(detail["document"]),
                journeys=list(JOURNEYS),
                simulation_problem=problem,
                pasted=pasted or "",
            )
        result = await run_simulation(container, version, events)
        leads = [
            {
                **lead,
                "chart": charts.line_chart(
                    f"trajectory-{n}",
                    f"Score of {lead['lead_id']} after each event",
                    [
                        (f"#{s['index'] + 1} {s['type']}", s["score"]["total"])
                        for s in lead["trajectory"]
                    ],
                    marks=[
                        (i, "→ " + s["stage"])
                        for i, s in enumerate(lead["trajectory"])
                        if s["transitions"]
                    ],
                ),
            }
            for n, lead in enumerate(result["leads"])
        ]
        moves = {
            t["transition_id"]: f"{t['from_stage']} → {t['to_stage']}"
            for t in result["transitions"]
        }
        return page(
            request,
            "simulation.html",
            user,
            version=detail,
            result=result,
            leads=leads,
            moves=moves,
        )

    @app.post("/rules/{version}/impact")
    async def impact(request: Request, version: Annotated[int, _VERSION]) -> Response:
        user, form = await posted(request, admin=True)
        job = await start_impact(container, version, by=user.name, days=_days(form, 30.0))
        return to(f"/jobs/{job}")

    @app.get("/jobs/{job_id}")
    async def job(request: Request, job_id: Annotated[str, _JOB_ID]) -> Response:
        user = await user_of(request)
        detail = await job_detail(container, job_id)
        figures = _impact_charts(detail["result"]) if detail["kind"] == "impact" else {}
        return page(request, "job.html", user, job=detail, **figures)

    @app.get("/jobs/{job_id}/progress")
    async def job_progress(request: Request, job_id: Annotated[str, _JOB_ID]) -> Response:
        await user_of(request)
        detail = await job_detail(container, job_id)
        return JSONResponse({"status": detail["status"], **detail["progress"]})

    # -- leads and accounts --------------------------------------------------------------------

    @app.get("/leads")
    async def leads(
        request: Request,
        stage: Annotated[Stage | None, Query()] = None,
        sort: Annotated[str, Query(pattern="^(-score|id)$")] = "-score",
        cursor: Annotated[str | None, Query(max_length=400)] = None,
    ) -> Response:
        user = await user_of(request)
        listing = await lead_page(
            container, stage=stage, min_score=None, cursor=cursor, limit=PAGE_SIZE, sort=sort
        )
        return page(request, "leads.html", user, listing=listing, stage=stage, sort=sort)

    @app.get("/leads/{lead_id:path}")
    async def lead(request: Request, lead_id: Annotated[str, _ID]) -> Response:
        user = await user_of(request)
        detail = await lead_detail(container, lead_id)
        history = await lead_history(container, detail["lead_id"], TIMELINE_EVENTS)
        async with container.db.connect() as conn:
            handoff = await queries.open_handoff(await driver(conn), detail["lead_id"])
        signals = detail["signals"]
        chart = charts.bar_chart(
            "contributions",
            f"What makes up the score of {detail['lead_id']}",
            [(s["rule_id"], s["contribution"]) for s in signals],
            unit=" pts",
        )
        return page(
            request,
            "lead.html",
            user,
            lead=detail,
            chart=chart,
            handoff=handoff,
            timeline=_timeline(history),
            signal_sum=round(sum(s["contribution"] for s in signals), 2),
        )

    @app.get("/accounts")
    async def accounts(
        request: Request,
        stage: Annotated[
            str | None, Query(pattern="^(target|engaged|mqa|opportunity|customer|disqualified)$")
        ] = None,
        role_missing: Annotated[str | None, Query(max_length=40)] = None,
        sort: Annotated[str, Query(pattern="^(-score|id)$")] = "-score",
        cursor: Annotated[str | None, Query(max_length=400)] = None,
    ) -> Response:
        user = await user_of(request)
        listing = await account_list(
            container,
            stage=stage,
            min_score=None,
            role_missing=role_missing or None,
            cursor=cursor,
            limit=PAGE_SIZE,
            sort=sort,
        )
        return page(
            request,
            "accounts.html",
            user,
            listing=listing,
            stage=stage,
            sort=sort,
            role_missing=role_missing,
        )

    @app.get("/accounts/{account_id:path}")
    async def account(request: Request, account_id: Annotated[str, _ID]) -> Response:
        user = await user_of(request)
        detail = await account_detail(container, account_id)
        members_chart = charts.bar_chart(
            "members",
            f"How much each member adds to {detail['account_id']}",
            [(m["lead_id"], m["counted"]) for m in detail["members"][:20]],
            unit=" pts",
        )
        return page(request, "account.html", user, account=detail, members_chart=members_chart)

    # -- pipeline ------------------------------------------------------------------------------

    @app.get("/pipeline")
    async def pipeline(
        request: Request,
        days: Annotated[str, Query(pattern="^(7|30|90|365)$")] = "30",
    ) -> Response:
        user = await user_of(request)
        until = datetime.now(UTC)
        since = until - timedelta(days=WINDOWS[days])
        report = await funnel_figures(container, since, until)
        async with container.db.connect() as conn:
            pg = await driver(conn)
            active = await rulesets.active_version(pg)
            review = await review_report(pg, since, until, active) if active else None
            running = await challenger.running(pg)
            challenger_review = (
                await review_report(pg, since, until, running.version, challenger=True)
                if running is not None
                else None
            )
        return page(
            request,
            "pipeline.html",
            user,
            report=report,
            days=days,
            windows=list(WINDOWS),
            review=review,
            challenger_review=challenger_review,
            **_funnel_charts(report),
        )

    return app


# Shown where a figure does not exist (no data), rather than a misleading zero.
NONE = "\N{EN DASH}"
_TITLES = {404: "Not found", 409: "Cannot do that now", 413: "Too large", 422: "Cannot use that"}
_VERSION = Path(ge=1, le=2**31 - 1)
_ID = Path(min_length=1, max_length=512)
_JOB_ID = Path(min_length=1, max_length=100)
_SESSION_ID = Path(pattern=r"^[0-9a-f]{64}$")


def _days(form: Any, default: float) -> float:
    """A form's `days` field: a number of days from 1 to 3650 (422 in words otherwise)."""
    raw = form.get("days")
    try:
        days = float(raw) if isinstance(raw, str) else default
    except ValueError:
        days = -1.0
    if not 0 < days <= 3650:
        raise ApiError(422, "invalid_request", "Days must be a number from 1 to 3650.")
    return days


def _local_path(target: str, prefix: str) -> str:
    """Only a page of this console may follow sign-in (no open redirect)."""
    if target.startswith(f"{prefix}/") and "//" not in target and "\\" not in target:
        return target
    return ""


def _yaml(document: Any) -> str:
    """A stored document as YAML for people: fields left unset (null) are left out."""
    return yaml.safe_dump(_without_nulls(document), sort_keys=False, allow_unicode=True, width=100)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _check(text: str) -> dict[str, Any]:
    try:
        document = load_document(text)
    except RuleSetInvalid as exc:
        return {"valid": False, "problems": problem_lines(text, exc.problems)}
    return {"valid": True, "problems": [], "rules": len(document.rules)}


def _journey(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """Pasted events: one JSON object per line, or one JSON array of objects."""
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            events = orjson.loads(stripped)
            lines = list(range(1, len(events) + 1)) if isinstance(events, list) else []
        else:
            rows = [(n, line) for n, line in enumerate(stripped.splitlines(), 1) if line.strip()]
            events, lines = [], []
            for number, line in rows:
                try:
                    events.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    return [], f"Line {number} is not JSON: {line[:80]}"
                lines.append(number)
    except orjson.JSONDecodeError as exc:
        return [], f"The events are not JSON: {exc}"
    if not isinstance(events, list) or not events:
        return [], "Paste at least one event."
    if len(events) > MAX_JOURNEY_EVENTS:
        return [], f"At most {MAX_JOURNEY_EVENTS:,} events at a time."
    for number, event in zip(lines, events, strict=False):
        if not isinstance(event, dict):
            return [], f"Event {number} is not a JSON object."
    return events, None


def _timeline(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Events and transitions in one list, oldest first."""
    items: list[dict[str, Any]] = [
        {
            "kind": "event",
            "at": event["occurred_at"],
            "title": event["type"],
            "points": event["contribution"],
            "hits": [h for h in event["hits"] if h["counted"]],
            "superseded": event["superseded"],
        }
        for event in history["events"]
    ]
    for transition in history["transitions"]:
        items.append(
            {
                "kind": "transition",
                "at": datetime.fromisoformat(transition["occurred_at"].replace("Z", "+00:00")),
                "title": f"{transition['from_stage']} → {transition['to_stage']}",
                "reason": transition.get("reason"),
                "detail": transition.get("reason_detail") or transition.get("rule_id"),
            }
        )
    items.sort(key=lambda item: (item["at"], item["kind"] == "transition"))
    return items


def _impact_charts(result: dict[str, Any] | None) -> dict[str, Any]:
    if not result:
        return {}
    stages = result["stages"]
    shown = [s for s in STAGES if stages[s]["active"] or stages[s]["candidate"]]
    stage_chart = charts.grouped_bar_chart(
        "impact-stages",
        "Leads per stage under each version",
        shown,
        [
            (f"version {result['active_version']} (active)", [stages[s]["active"] for s in shown]),
            (f"version {result['candidate_version']}", [stages[s]["candidate"] for s in shown]),
        ],
    )
    rule_chart = charts.bar_chart(
        "impact-rules",
        "Points the candidate gives minus the active version's, by rule (all leads)",
        # Differences under half a point are rounding, not a change of rules.
        [
            (r["rule_id"], r["difference"])
            for r in result["rules"][:15]
            if abs(r["difference"]) >= 0.5
        ],
        unit=" pts",
    )
    return {"stage_chart": stage_chart, "rule_chart": rule_chart, "shown_stages": shown}


def _funnel_charts(report: dict[str, Any]) -> dict[str, Any]:
    stages = report["stages"]
    sla = report["sla"]
    return {
        "entered_chart": charts.bar_chart(
            "entered", "Leads entering each stage", [(s, stages[s]["entered"]) for s in stages]
        ),
        "conversion_chart": charts.bar_chart(
            "conversion",
            "Conversion to the next stage",
            [
                (f"{c['from']} → {c['to']}", round((c["rate"] or 0) * 100, 1))
                for c in report["conversion"]
            ],
            unit="%",
        ),
        "time_chart": charts.bar_chart(
            "time-in-stage",
            "Median hours in each stage",
            [
                (s, round((stages[s]["median_seconds_in_stage"] or 0) / 3600, 1))
                for s in stages
                if stages[s]["median_seconds_in_stage"] is not None
            ],
            unit=" h",
        ),
        "sla_chart": charts.bar_chart(
            "sla",
            "Follow-ups after handoff",
            [
                ("answered in time", sla["answered_in_time"]),
                ("answered late", sla["answered_late"]),
                ("breached, unanswered", sla["breached_unanswered"]),
                ("still open", sla["open"]),
            ],
        ),
        "rejection_chart": charts.bar_chart(
            "rejections",
            "Rejections by reason",
            [(r["reason"] or "no reason given", r["count"]) for r in report["rejections"]],
        ),
    }


def _when(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def _num(value: Any) -> str:
    if value is None:
        return NONE
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"
