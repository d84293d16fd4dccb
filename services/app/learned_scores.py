"""Training a learned score on the outcomes the service holds, published as a new version.

The leads a version handed to sales in a window that sales decided on (won or lost; or
qualified or rejected) are the samples. Each one's stored history up to its handoff is
replayed under that version from an empty start, so its features are what the engine would
have read at that moment (scoring_service/model_score.py), and the rules' own score then is
kept to compare rankings. The model (scoring_service/training.py) goes into a copy of the
version as a named score of its own, published inactive: simulate, challenge, compare,
activate and roll back it as any version.

With `retrain_every_days` set, `retrain_on_schedule` does the same for the active version
on a schedule and starts the result as the challenger; it never activates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas import api
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.rules import compile_ruleset
from scoring_service.training import (
    Report,
    Sample,
    TooFewOutcomes,
    replay_chunks,
    samples_at_handoffs,
    train,
)
from services.adapters.postgres import history_store, lead_store, read_store, rule_set_store
from services.adapters.postgres.db import connection, transaction
from services.adapters.postgres.errors import DATABASE_ERROR, UNAVAILABLE
from services.app.container import Container
from services.app.errors import ApiError
from services.app.paging import time_window
from services.app.rule_sets import start_challenge, stop_challenge
from services.pipeline import challenger
from services.reports import review

log = logging.getLogger(__name__)

# Leads whose history is read and replayed at a time: memory stays bounded.
HISTORY_CHUNK = 1000
# A new learned score's thresholds (points out of 100) until an admin sets others.
DEFAULT_THRESHOLDS = {"mql": 35.0, "sal": 60.0}
# The schedule's runs in the audit log, and who they are by there and on the challenger.
SCHEDULED = "ruleset.retrain"
SCHEDULE = "schedule"
# How often an idle schedule looks again (another instance may have trained meanwhile).
RECHECK_SECONDS = 3600.0
OUTAGE_RETRY_SECONDS = 60.0
DAY = 86400.0


async def train_version(
    container: Container, version: int, request: api.TrainRequest, *, by: str
) -> api.TrainingPublic:
    """Train `request.score` on the outcomes of the leads `version` handed off, and publish
    the version with it as a new, inactive one. 422 `too_few_outcomes` below 40 good or 40
    bad outcomes; 422 `invalid_model` when the result cannot be published."""
    since, until = time_window(request.since, request.until, default_days=365)
    async with connection(container.db) as pg:
        row = await read_store.ruleset_version(pg, version)
        if row is None:
            raise ApiError(404, "ruleset_not_found", f"there is no rule-set version {version}")
        decided = await review.decided_leads(pg, since, until, version, request.target)
    document = RuleSetDocument.model_validate(orjson.loads(row["document"]))
    if request.score in document.scores and document.scores[request.score].model is None:
        raise ApiError(
            422,
            "score_taken",
            f"version {version} has a score {request.score!r} its rules count for; name the "
            "learned score otherwise",
        )
    # The version as it scores without the learned score being trained (a previous model of
    # that name is left out: it must not be one of its own features).
    plain = document.model_dump(mode="json", by_alias=True, exclude_none=True)
    plain["scores"].pop(request.score, None)
    engine = Engine(
        compile_ruleset(RuleSetDocument.model_validate(plain), version), account_features=True
    )
    samples = await _samples(container, engine, decided)

    def fit() -> tuple[Any, Report]:
        return train(samples, outcome=request.target, horizon_days=request.horizon_days)

    try:
        spec, report = await asyncio.to_thread(fit)
    except TooFewOutcomes as exc:
        raise ApiError(422, "too_few_outcomes", str(exc)) from exc
    earlier = document.scores.get(request.score)
    plain["scores"][request.score] = {
        "description": f"likelihood to be {request.target}, learned from version {version}'s "
        f"handoffs {since.date().isoformat()} to {until.date().isoformat()}",
        "thresholds": earlier.thresholds.model_dump() if earlier else DEFAULT_THRESHOLDS,
        "model": spec.model_dump(mode="json"),
    }
    try:
        trained = RuleSetDocument.model_validate(plain)
    except ValueError as exc:
        raise ApiError(
            422, "invalid_model", f"the trained model cannot be published: {exc}"
        ) from exc
    comment = (
        f"{request.score}: learned from {report.samples} decided handoffs of version "
        f"{version}; held-out AUC {report.auc} (rules {report.auc_rules})"
    )
    async with transaction(container.db) as pg:
        new_version = await rule_set_store.publish(pg, trained, by=by, comment=comment)
        await rule_set_store.record_audit(
            pg,
            actor=by,
            action="ruleset.train",
            target=str(new_version),
            detail={
                "source": version,
                "score": request.score,
                "target": request.target,
                "samples": report.samples,
                "auc": report.auc,
            },
        )
    return api.TrainingPublic(
        version=new_version,
        source_version=version,
        score=request.score,
        target=request.target,
        since=since,
        until=until,
        report=report.to_dict(),
    )


async def _samples(
    container: Container, engine: Engine, decided: list[tuple[str, datetime, bool]]
) -> list[Sample]:
    """Each decided lead as it stood at its handoff: its history and its account's other
    members' replayed together up to then (scoring_service/training.py), about
    HISTORY_CHUNK leads' histories in memory at a time."""
    handoffs = [(lead_id, at.timestamp(), good) for lead_id, at, good in decided]
    async with connection(container.db) as pg:
        leads = await lead_store.load_leads(pg, [lead_id for lead_id, _, _ in handoffs])
        account_ids = sorted({s.account_id for s in leads.values() if s.account_id})
        accounts = await lead_store.load_accounts(pg, account_ids)
    pieces = replay_chunks(
        handoffs,
        {lead_id: state.account_id for lead_id, state in leads.items()},
        {account_id: list(account.members) for account_id, account in accounts.items()},
        HISTORY_CHUNK,
    )
    samples: list[Sample] = []
    for lead_ids, theirs in pieces:
        async with connection(container.db) as pg:
            history = await history_store.load_history(pg, lead_ids)
        events = [event for stored in history.values() for _, event in stored]
        # A pure replay, off the event loop: live scoring keeps its turn.
        samples += await asyncio.to_thread(samples_at_handoffs, engine, events, theirs)
    return samples


async def retrain_on_schedule(
    container: Container, stop: asyncio.Event, *, retry_seconds: float = OUTAGE_RETRY_SECONDS
) -> None:
    """Every `retrain_every_days`, train the active version's learned score and start the
    result as the challenger, until `stop`. The audit log holds each run
    (`ruleset.retrain`), so a restart keeps the period and several instances train once
    between them. While the database cannot be reached, it logs, counts
    (`database_unavailable`) and tries again every `retry_seconds`."""
    settings = container.settings
    every = (settings.retrain_every_days or 0.0) * DAY
    while not stop.is_set():
        wait = RECHECK_SECONDS
        try:
            async with connection(container.db) as pg:
                due = await rule_set_store.claim_scheduled(
                    pg, action=SCHEDULED, every_seconds=every, actor=SCHEDULE
                )
            if due is None:
                try:
                    await retrain_now(container)
                except (*UNAVAILABLE, DATABASE_ERROR):
                    raise
                except Exception:  # a defect: this period's run fails, the service goes on
                    log.exception("scheduled training failed")
                    container.metrics.scheduled_trainings.labels("failed").inc()
            else:
                wait = min(wait, max(1.0, (due - datetime.now(UTC)).total_seconds()))
        except (*UNAVAILABLE, DATABASE_ERROR) as exc:
            log.warning("scheduled training could not reach the database (%s)", type(exc).__name__)
            container.metrics.scheduled_trainings.labels("database_unavailable").inc()
            wait = retry_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


async def retrain_now(container: Container) -> api.TrainingPublic | None:
    """One scheduled run: train the active version's learned score on the last year's
    outcomes and publish it. The new version becomes the challenger unless a person's
    challenger runs (the schedule replaces only its own); it is never activated. Too few
    outcomes is logged and counted, and the next period tries again."""
    settings = container.settings
    metrics = container.metrics
    async with connection(container.db) as pg:
        active = await rule_set_store.active_version(pg)
        running = await challenger.running(pg)
    if active is None:
        return None
    request = api.TrainRequest(score=settings.retrain_score, target=settings.retrain_target)
    try:
        trained = await train_version(container, active, request, by=SCHEDULE)
    except ApiError as exc:
        result = "too_few_outcomes" if exc.code == "too_few_outcomes" else "failed"
        log.warning("scheduled training of version %s: %s", active, exc.detail)
        metrics.scheduled_trainings.labels(result).inc()
        return None
    if running is not None and running.started_by != SCHEDULE:
        log.info(
            "scheduled training published version %s; version %s, started by a person, "
            "stays the challenger",
            trained.version,
            running.version,
        )
        metrics.scheduled_trainings.labels("published").inc()
        return trained
    if running is not None:
        await stop_challenge(container, running.version, by=SCHEDULE)
    await start_challenge(container, trained.version, by=SCHEDULE)
    log.info(
        "scheduled training published version %s (held-out AUC %s, rules %s) and started it "
        "as the challenger",
        trained.version,
        trained.report.get("auc"),
        trained.report.get("auc_rules"),
    )
    metrics.scheduled_trainings.labels("challenging").inc()
    return trained
