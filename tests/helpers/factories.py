"""Segment events for tests, as the trackers would send them."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from scoring_service.intake import Event, parse_event

BASE = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(days: float = 0, *, hours: float = 0, seconds: float = 0) -> str:
    moment = BASE + timedelta(days=days, hours=hours, seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def segment(
    kind: str,
    *,
    user: str | None = None,
    anon: str | None = None,
    when: str | None = None,
    message_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": kind,
        "messageId": message_id or f"m-{next(_ids)}",
        "timestamp": when or at(),
    }
    if user:
        doc["userId"] = user
    if anon:
        doc["anonymousId"] = anon
    doc.update(fields)
    return doc


def page(path: str, **kw: Any) -> dict[str, Any]:
    return segment("page", properties={"path": path}, **kw)


def track(name: str, **kw: Any) -> dict[str, Any]:
    return segment("track", event=name, properties={}, **kw)


def identify(traits: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return segment("identify", traits=traits, **kw)


def group(group_id: str, traits: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return segment("group", groupId=group_id, traits=traits, **kw)


def alias(previous: str, user: str, **kw: Any) -> dict[str, Any]:
    return segment("alias", previousId=previous, user=user, **kw)


NOW = (BASE + timedelta(days=400)).timestamp()


def parsed(doc: dict[str, Any]) -> Event:
    result = parse_event(orjson.dumps(doc), now=NOW)
    assert isinstance(result, Event), result
    return result
