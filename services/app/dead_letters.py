"""Dead letters: what the service could not use, read back from the dead-letter topic, and
one sent to `lead-events` again once fixed. The console's page and the command line share
these; the topic is the only store (no copy of the events is kept elsewhere)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scoring_service.intake import Rejection, parse_event
from services.adapters import kafka
from services.app.container import Container
from services.app.errors import ApiError


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    at: str  # PARTITION:OFFSET on the dead-letter topic
    received: datetime
    error: str
    detail: str
    source: str  # topic:partition:offset it came from
    value: str


def view(record: Any) -> DeadLetterView:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
    source = ":".join(
        headers.get(k, "?") for k in ("source_topic", "source_partition", "source_offset")
    )
    return DeadLetterView(
        at=f"{record.partition}:{record.offset}",
        received=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        error=headers.get("error", ""),
        detail=headers.get("error_detail", ""),
        source=source,
        value=(record.value or b"").decode("utf-8", "replace"),
    )


def parse_at(at: str) -> tuple[int, int]:
    partition, _, offset = at.partition(":")
    if not (partition.isdigit() and offset.isdigit() and len(at) <= 40):
        raise ApiError(422, "invalid_request", f"{at!r}: a dead letter is named PARTITION:OFFSET")
    return int(partition), int(offset)


async def listing(
    container: Container, *, reason: str | None, since: float | None, limit: int = 100
) -> list[DeadLetterView]:
    records = await kafka.read_dead_letters(container.settings, since=since, limit=limit)
    views = [view(r) for r in records]
    return [v for v in views if not reason or v.error == reason]


async def one(container: Container, at: str) -> DeadLetterView:
    partition, offset = parse_at(at)
    record = await kafka.dead_letter_at(container.settings, partition, offset)
    if record is None:
        raise ApiError(404, "not_found", f"there is no dead letter at {at}")
    return view(record)


async def resend(container: Container, at: str, fixed: bytes | None) -> None:
    """Send a dead letter (or its fixed text) to `lead-events`, checked as the consumer
    checks it: one still refused is not sent (422 with the reason)."""
    letter = await one(container, at)
    value = fixed.strip() if fixed else letter.value.encode()
    verdict = parse_event(value, now=time.time(), fallback_ts=time.time())
    if isinstance(verdict, Rejection):
        raise ApiError(422, "invalid_event", f"still refused: {verdict.code}: {verdict.detail}")
    key = verdict.user_id or verdict.anonymous_id
    sent = await container.producer.send(
        container.settings.topic_events, value, key=key.encode() if key else None
    )
    await sent
