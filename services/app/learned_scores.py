"""Training a learned score on the outcomes the service holds, published as a new version.

The leads a version handed to sales in a window that sales decided on (won or lost; or
qualified or rejected) are the samples. Each one's stored history up to its handoff is
replayed under that version from an empty start, so its features are what the engine would
have read at that moment (scoring_service/model_score.py), and the rules' own score then is
kept to compare rankings. The model (scoring_service/training.py) goes into a copy of the
version as a named score of its own, published inactive: simulate, challenge, compare,
activate and roll back it as any version.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson

from schemas import api
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.model_score import features_of
from scoring_service.rules import compile_ruleset
from scoring_service.state import LeadState
from scoring_service.training import Report, Sample, TooFewOutcomes, train
from services.adapters.postgres import history_store, read_store, rule_set_store
from services.adapters.postgres.db import connection, transaction
from services.app.container import Container
from services.app.errors import ApiError
from services.app.paging import time_window
from services.reports import review

# Leads whose history is read and replayed at a time: memory stays bounded.
HISTORY_CHUNK = 1000
# A new learned score's thresholds (points out of 100) until an admin sets others.
DEFAULT_THRESHOLDS = {"mql": 35.0, "sal": 60.0}


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
    engine = Engine(compile_ruleset(RuleSetDocument.model_validate(plain), version))
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
    """Each decided lead as it stood at its handoff: its history replayed up to then."""
    samples: list[Sample] = []
    for start in range(0, len(decided), HISTORY_CHUNK):
        chunk = decided[start : start + HISTORY_CHUNK]
        async with connection(container.db) as pg:
            history = await history_store.load_history(pg, [lead_id for lead_id, _, _ in chunk])
        for lead_id, handed_at, good in chunk:
            at = handed_at.timestamp()
            state = LeadState(lead_id=lead_id)
            for _, event in history.get(lead_id, []):
                if event.ts <= at:
                    engine.apply_event(state, event, None, now=at)
            samples.append(Sample(lead_id, at, features_of(state, engine.rules), good, state.total))
        await asyncio.sleep(0)  # live scoring shares the event loop
    return samples
