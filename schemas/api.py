"""HTTP API bodies."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from schemas.records import Score, Signal
from schemas.ruleset import Stage


class LeadPublic(BaseModel):
    """GET /v1/leads/{lead_id}: where a lead stands now and why."""

    lead_id: str
    stage: Stage
    stage_entered_at: datetime | None
    account_id: str | None
    score: Score
    score_as_of: datetime
    last_event_at: datetime | None
    top_signals: list[Signal]
    ruleset_version: int


class ErrorBody(BaseModel):
    error: str
    detail: object | None = None


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = {}
