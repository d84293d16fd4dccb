"""Rule sets: the versions, the editor (validation as you type), a version, a diff, activation and
roll-back, a challenger, proposed weights, simulations, impact reports and their jobs."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from schemas import api
from scoring_service.diff import around_changes, side_by_side
from scoring_service.rule_set_files import (
    MAX_DOCUMENT_BYTES,
    RuleSetInvalid,
    load_document,
    problem_lines,
)
from services.app.errors import ApiError
from services.app.learned_scores import train_version
from services.app.rule_sets import (
    activate_version,
    challenger_status,
    job_detail,
    previous_active_version,
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
from services.console import charts
from services.console.formats import source_text
from services.console.journeys import JOURNEYS
from services.console.pages import PagesDep
from services.console.session import (
    check_csrf,
    visitor_of,
)
from stage_router.lifecycle import STAGES

log = logging.getLogger(__name__)

# A pasted journey: at most this many events (the API's simulation limit).
MAX_JOURNEY_EVENTS = 10_000
_VERSION = Path(ge=1, le=2**31 - 1)
_JOB_ID = Path(min_length=1, max_length=100)

router = APIRouter()


@router.get("/rules")
async def rules(request: Request, ui: PagesDep) -> Response:
    user = await ui.user_of(request)
    versions = await ruleset_list(ui.container)
    active = next((v.version for v in versions if v.active), None)
    previous = None
    if active is not None:
        previous = await previous_active_version(ui.container, active)
    return ui.page(
        request,
        "rules.html",
        user,
        versions=versions,
        active=active,
        previous=previous,
        challenger=await challenger_status(ui.container),
    )


@router.get("/rules/new")
async def editor(
    request: Request, ui: PagesDep, start: Annotated[int | None, Query(ge=1)] = None
) -> Response:
    user = await ui.admin_of(request)
    source = await ruleset_detail(ui.container, start)
    return ui.page(
        request,
        "editor.html",
        user,
        text=source_text(source),
        start=source.version,
        problems=[],
        comment="",
    )


@router.post("/rules/validate")
async def validate(request: Request, ui: PagesDep) -> Response:
    """For the editor's validation as you type: the problems, each with its line."""
    await ui.admin_of(request)
    check_csrf(await visitor_of(request, ui.sessions), request.headers.get("x-csrf-token"))
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


@router.post("/rules")
async def publish(request: Request, ui: PagesDep) -> Response:
    user, form = await ui.posted(request, admin=True)
    text, comment = form.get("document"), form.get("comment")
    text = text if isinstance(text, str) else ""
    comment = comment.strip()[:1000] if isinstance(comment, str) and comment.strip() else None
    try:
        published = await publish_ruleset(
            ui.container, text.encode(), by=user.name, comment=comment
        )
    except ApiError as exc:
        if exc.status != 422:
            raise
        problems = await asyncio.to_thread(problem_lines, text, exc.detail)
        start = form.get("start")
        return ui.page(
            request,
            "editor.html",
            user,
            422,
            text=text,
            problems=problems,
            comment=comment or "",
            start=start if isinstance(start, str) else "",
        )
    return ui.to(
        f"/rules/{published.version}",
        notice=f"Published version {published.version}. It is not live until you activate it.",
    )


@router.get("/rules/{version}")
async def version_page(
    request: Request, ui: PagesDep, version: Annotated[int, _VERSION]
) -> Response:
    user = await ui.user_of(request)
    detail = await ruleset_detail(ui.container, version)
    return ui.page(
        request,
        "version.html",
        user,
        version=detail,
        challenger=await challenger_status(ui.container),
        text=source_text(detail),
        journeys=list(JOURNEYS),
        learned=learned_cards(detail.document),
    )


@router.get("/rules/{version}/diff")
async def diff(
    request: Request,
    ui: PagesDep,
    version: Annotated[int, _VERSION],
    against: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    full: bool = False,
) -> Response:
    user = await ui.user_of(request)
    base_version = await ruleset_detail(ui.container, against)
    this = await ruleset_detail(ui.container, version)
    changes = await ruleset_diff(ui.container, base_version.version, version)
    every_row = side_by_side(source_text(base_version), source_text(this))
    rows = every_row if full else around_changes(every_row)
    return ui.page(
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


@router.post("/rules/{version}/activate")
async def activate(request: Request, ui: PagesDep, version: Annotated[int, _VERSION]) -> Response:
    user, form = await ui.posted(request, admin=True)
    await activate_version(ui.container, version, by=user.name)
    what = "Rolled back to" if form.get("rollback") else "Activated"
    return ui.to("/rules", notice=f"{what} version {version}: live scoring uses it now.")


@router.post("/rules/{version}/challenge")
async def challenge(request: Request, ui: PagesDep, version: Annotated[int, _VERSION]) -> Response:
    user, form = await ui.posted(request, admin=True)
    if form.get("stop"):
        await stop_challenge(ui.container, version, by=user.name)
        return ui.to(f"/rules/{version}", notice=f"Version {version} is no longer the challenger.")
    started = await start_challenge(ui.container, version, by=user.name)
    return ui.to(
        "/rules",
        notice=f"Version {version} now scores every live event next to the active version "
        f"and publishes nothing; {started.leads_live} existing leads are being replayed "
        "under it.",
    )


def _outcome_window(form: Any) -> tuple[datetime, datetime, str]:
    """The handoffs a form asks to learn from: its window (the last `days`) and target."""
    days, target = _days(form, 365.0), form.get("target")
    if target not in ("won", "qualified"):
        raise ApiError(422, "invalid_request", "Learn from won or qualified outcomes.")
    until = datetime.now(UTC)
    return until - timedelta(days=days), until, target


@router.post("/rules/{version}/propose")
async def propose(request: Request, ui: PagesDep, version: Annotated[int, _VERSION]) -> Response:
    user, form = await ui.posted(request, admin=True)
    since, until, target = _outcome_window(form)
    result = await propose_version(
        ui.container, version, by=user.name, since=since, until=until, target=target
    )
    return ui.to(
        f"/rules/{result.version}",
        notice=f"Proposed version {result.version} from {result.samples} decided "
        f"leads: held-out AUC {result.auc_old:.3f} (version {version}) -> "
        f"{result.auc_proposed:.3f}. Judge it with an impact report or as a challenger "
        "before activating it.",
    )


@router.post("/rules/{version}/train")
async def train(request: Request, ui: PagesDep, version: Annotated[int, _VERSION]) -> Response:
    user, form = await ui.posted(request, admin=True)
    since, until, target = _outcome_window(form)
    result = await train_version(
        ui.container,
        version,
        api.TrainRequest(target=target, since=since, until=until),
        by=user.name,
    )
    report = result.report
    return ui.to(
        f"/rules/{result.version}",
        notice=f"Trained the learned score {result.score!r} on {report['samples']} decided "
        f"handoffs: held-out AUC {report['auc']} (the rules' score: {report['auc_rules']}). "
        "Judge it as a challenger before activating it.",
    )


def learned_cards(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each learned score's card: how it was trained, how it did on the most recent
    handoffs, its calibration and its strongest features, drawn."""
    cards = []
    for name, score in (document.get("scores") or {}).items():
        model = score.get("model")
        if not model:
            continue
        training = model.get("training") or {}
        weights = sorted(
            ((f["name"], f["weight"] / f.get("scale", 1.0)) for f in model["features"]),
            key=lambda item: -abs(item[1]),
        )[:12]
        deciles = training.get("calibration") or []
        cards.append(
            {
                "name": name,
                "model": model,
                "training": training,
                "features": charts.bar_chart(
                    f"features-{name}", f"{name}: log-odds per unit of each feature", weights
                ),
                "calibration": charts.grouped_bar_chart(
                    f"calibration-{name}",
                    f"{name}: predicted against observed, by decile (held out)",
                    [f"decile {row['decile']}" for row in deciles],
                    [
                        ("predicted", [round(100 * row["predicted"], 1) for row in deciles]),
                        ("observed", [round(100 * row["observed"], 1) for row in deciles]),
                    ],
                )
                if deciles
                else None,
            }
        )
    return cards


@router.post("/rules/{version}/simulate")
async def simulate(request: Request, ui: PagesDep, version: Annotated[int, _VERSION]) -> Response:
    user, form = await ui.posted(request, admin=False)
    detail = await ruleset_detail(ui.container, version)
    picked, pasted = form.get("journey"), form.get("events")
    if isinstance(pasted, str) and pasted.strip():
        events, problem = _journey(pasted)
    elif isinstance(picked, str) and picked in JOURNEYS:
        events, problem = JOURNEYS[picked], None
    else:
        events, problem = [], "Pick a journey or paste events, one JSON object per line."
    if problem is not None:
        return ui.page(
            request,
            "version.html",
            user,
            422,
            version=detail,
            text=source_text(detail),
            journeys=list(JOURNEYS),
            simulation_problem=problem,
            pasted=pasted or "",
        )
    # The page reads the result as the API gives it.
    result = (await run_simulation(ui.container, version, events)).model_dump(
        mode="json", by_alias=True
    )
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
        t["transition_id"]: f"{t['from_stage']} → {t['to_stage']}" for t in result["transitions"]
    }
    return ui.page(
        request,
        "simulation.html",
        user,
        version=detail,
        result=result,
        leads=leads,
        moves=moves,
    )


@router.post("/rules/{version}/impact")
async def impact(request: Request, ui: PagesDep, version: Annotated[int, _VERSION]) -> Response:
    user, form = await ui.posted(request, admin=True)
    job = await start_impact(ui.container, version, by=user.name, days=_days(form, 30.0))
    return ui.to(f"/jobs/{job}")


@router.get("/jobs/{job_id}")
async def job(request: Request, ui: PagesDep, job_id: Annotated[str, _JOB_ID]) -> Response:
    user = await ui.user_of(request)
    detail = await job_detail(ui.container, job_id)
    figures = _impact_charts(detail.result) if detail.kind == "impact" else {}
    return ui.page(request, "job.html", user, job=detail, **figures)


@router.get("/jobs/{job_id}/progress")
async def job_progress(request: Request, ui: PagesDep, job_id: Annotated[str, _JOB_ID]) -> Response:
    await ui.user_of(request)
    detail = await job_detail(ui.container, job_id)
    return JSONResponse({"status": detail.status, **detail.progress.model_dump()})


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
