"""Rule sets: publish, read, diff, activate, simulate, impact reports; their jobs and audit.
Each route parses the request and calls a use case (services/app/rule_sets.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from schemas import api
from schemas.rule_set import RuleSetDocument
from scoring_service.rule_set_files import MAX_DOCUMENT_BYTES
from services.app import learned_scores, rule_sets
from services.app.errors import ApiError
from services.http.common import ERRORS, NOT_FOUND, Version
from services.http.deps import Admin, ContainerDep, Viewer

router = APIRouter(prefix="/v1", tags=["rule sets"], responses=ERRORS)


@router.post(
    "/rulesets",
    status_code=201,
    response_model=api.RuleSetPublic,
    responses={
        413: {"model": api.ErrorBody},
        422: {"model": api.RuleSetProblems, "description": "every problem, with its place"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": RuleSetDocument.model_json_schema()},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def publish(
    container: ContainerDep,
    request: Request,
    who: Admin,
    comment: Annotated[str | None, Query(max_length=1000)] = None,
) -> api.RuleSetPublic:
    """Validate a rule set (JSON or YAML) and store it as a new immutable version."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_DOCUMENT_BYTES:
        raise ApiError(413, "too_large", f"a rule set is at most {MAX_DOCUMENT_BYTES} bytes")
    body = await request.body()
    return await rule_sets.publish_ruleset(container, body, by=who.name, comment=comment)


@router.get("/rulesets", response_model=list[api.RuleSetSummary])
async def list_rulesets(container: ContainerDep, _: Viewer) -> list[api.RuleSetSummary]:
    """Every published version, newest first."""
    return await rule_sets.ruleset_list(container)


@router.get("/rulesets/active", response_model=api.RuleSetPublic, responses=NOT_FOUND)
async def get_active(container: ContainerDep, _: Viewer) -> api.RuleSetPublic:
    """The version live scoring uses now."""
    return await rule_sets.ruleset_detail(container, None)


@router.get("/rulesets/{version}", response_model=api.RuleSetPublic, responses=NOT_FOUND)
async def get_version(container: ContainerDep, version: Version, _: Viewer) -> api.RuleSetPublic:
    return await rule_sets.ruleset_detail(container, version)


@router.get("/rulesets/{a}/diff/{b}", response_model=api.RuleSetDiff, responses=NOT_FOUND)
async def diff(container: ContainerDep, a: Version, b: Version, _: Viewer) -> api.RuleSetDiff:
    """Rules added, removed and changed (field by field) from version a to version b."""
    return await rule_sets.ruleset_diff(container, a, b)


@router.post("/rulesets/{version}/activate", response_model=api.Activation, responses=NOT_FOUND)
async def activate(
    container: ContainerDep, version: Version, who: Admin, rescore: bool = False
) -> api.Activation:
    """Make a version live for every instance at once; rolling back is activating an
    older one. With `rescore=true`, a job re-scores every lead under it."""
    return await rule_sets.activate_version(container, version, by=who.name, rescore=rescore)


@router.get("/challenger", response_model=api.ChallengerStatus | None)
async def get_challenger(container: ContainerDep, _: Viewer) -> api.ChallengerStatus | None:
    """The version being tried on live traffic next to the active one (null if none)."""
    return await rule_sets.challenger_status(container)


@router.post(
    "/rulesets/{version}/challenge",
    status_code=201,
    response_model=api.ChallengerStarted,
    responses={**NOT_FOUND, 409: {"model": api.ErrorBody}},
)
async def challenge(container: ContainerDep, version: Version, who: Admin) -> api.ChallengerStarted:
    """Score every live event under this version too, into its own state: no records,
    no deadlines, no routing. One challenger at a time (409 otherwise). A job replays
    the leads that already exist under it; activating it later is immediate."""
    return await rule_sets.start_challenge(container, version, by=who.name)


@router.delete(
    "/rulesets/{version}/challenge",
    response_model=api.ChallengerStopped,
    responses={**NOT_FOUND, 409: {"model": api.ErrorBody}},
)
async def stop(container: ContainerDep, version: Version, who: Admin) -> dict[str, Any]:
    """Stop the challenger and drop its state (its stage changes stay for the review)."""
    await rule_sets.stop_challenge(container, version, by=who.name)
    return {"version": version, "stopped_by": who.name}


@router.post(
    "/rulesets/{version}/train",
    status_code=201,
    response_model=api.TrainingPublic,
    responses={**NOT_FOUND, 422: {"model": api.ErrorBody}},
)
async def train(
    container: ContainerDep, version: Version, who: Admin, body: api.TrainRequest | None = None
) -> api.TrainingPublic:
    """Train a learned score (`score`, default `likelihood`) on the outcomes of the leads
    this version handed off in a window: each lead's history replayed to its handoff, a
    regularised logistic regression tested on the most recent 20% of handoffs, calibrated
    to observed rates. Publishes this version with the learned score as a new, inactive
    version; the answer reports AUC (the model's and the rules'), log loss, calibration by
    decile and conversion by grade band. 422 `too_few_outcomes` below 40 good or 40 bad
    outcomes."""
    return await learned_scores.train_version(
        container, version, body or api.TrainRequest(), by=who.name
    )


@router.post(
    "/rulesets/{version}/propose",
    status_code=201,
    response_model=api.ProposalPublic,
    responses={**NOT_FOUND, 422: {"model": api.ErrorBody}},
)
async def propose(
    container: ContainerDep, version: Version, who: Admin, body: api.ProposeRequest | None = None
) -> api.ProposalPublic:
    """Fit this version's rule points to sales outcomes (won/lost, or qualified/
    rejected) of the leads it handed off in a window, with an L2-regularised logistic
    regression; publish the rounded points as a new, inactive version whose comment
    records the window, the held-out AUC and each rule's old and new points. 422
    `too_few_outcomes` when the window holds too few decided leads."""
    request = body or api.ProposeRequest()
    return await rule_sets.propose_version(
        container,
        version,
        by=who.name,
        since=request.since,
        until=request.until,
        target=request.target,
        seed=request.seed,
        score=request.score,
    )


@router.post(
    "/rulesets/{version}/simulate", response_model=api.SimulationResult, responses=NOT_FOUND
)
async def simulate_version(
    container: ContainerDep, version: Version, body: api.SimulateRequest, _: Viewer
) -> api.SimulationResult:
    """Score the given events from an empty start under a version; writes nothing.
    Runs on a worker thread with a time budget (422 `too_expensive` past it)."""
    return await rule_sets.run_simulation(container, version, body.events)


@router.post(
    "/rulesets/{version}/impact",
    status_code=202,
    response_model=api.JobAccepted,
    responses=NOT_FOUND,
)
async def impact(
    container: ContainerDep, version: Version, who: Admin, body: api.ImpactRequest | None = None
) -> dict[str, Any]:
    """Start a job replaying the last N days under this version and the active one."""
    days = (body or api.ImpactRequest()).days
    job = await rule_sets.start_impact(container, version, by=who.name, days=days)
    return {"job_id": job, "status_url": f"/v1/jobs/{job}"}


@router.get("/jobs/{job_id}", response_model=api.JobPublic, responses=NOT_FOUND, tags=["jobs"])
async def job_status(container: ContainerDep, job_id: str, _: Viewer) -> api.JobPublic:
    """A background job's progress and, when finished, its result."""
    return await rule_sets.job_detail(container, job_id)


@router.get("/audit", response_model=api.AuditPage, tags=["audit"])
async def audit(
    container: ContainerDep,
    _: Admin,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> api.AuditPage:
    """Every rule-set change and activation, newest first."""
    return await rule_sets.audit_page(container, cursor, limit)
