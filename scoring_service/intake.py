"""Parsing raw `lead-events` messages into events, or into a reason for the DLQ. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas.events import EVENT_TYPES, AnySegmentEvent
from scoring_service.timefmt import iso, parse_iso

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FUTURE_SECONDS = 24 * 3600.0
_SEGMENT = TypeAdapter(AnySegmentEvent)
_EMPTY: dict[str, Any] = {}


@dataclass(slots=True)
class Event:
    """A validated Segment call, in the shape the engine reads."""

    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    ts: float  # event time, epoch seconds
    event_name: str | None = None  # track: case-folded
    path: str | None = None  # page: case-folded
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    group_id: str | None = None
    previous_id: str | None = None

    @property
    def timestamp(self) -> str:
        """Event time as ISO-8601 UTC; computed on demand, as few events need it."""
        return iso(self.ts)

    @property
    def raw_id(self) -> str:
        """The id the event names its lead by, before identity stitching."""
        return self.user_id or self.anonymous_id  # type: ignore[return-value]


def event_doc(event: Event) -> dict[str, Any]:
    """The part of an event that scoring reads, for the stored history (replays, re-scoring)."""
    doc: dict[str, Any] = {"type": event.type, "message_id": event.message_id, "ts": event.ts}
    for name in ("event_name", "path", "properties", "traits", "group_id"):
        value = getattr(event, name)
        if value:
            doc[name] = value
    return doc


def event_from_doc(doc: dict[str, Any], lead_id: str) -> Event:
    """An event from the stored history, attributed to `lead_id` (identity already resolved)."""
    return Event(
        type=doc["type"],
        message_id=doc["message_id"],
        user_id=lead_id,
        anonymous_id=None,
        ts=doc["ts"],
        event_name=doc.get("event_name"),
        path=doc.get("path"),
        properties=doc.get("properties"),
        traits=doc.get("traits"),
        group_id=doc.get("group_id"),
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message goes to the DLQ: a short machine code and a sentence for humans."""

    code: str
    detail: str


def _page_path(doc: dict[str, Any]) -> str | None:
    properties = doc.get("properties") or _EMPTY
    path = properties.get("path")
    if not path and properties.get("url"):
        path = urlsplit(str(properties["url"])).path
    if not path:
        context_page = (doc.get("context") or _EMPTY).get("page") or _EMPTY
        path = context_page.get("path") if isinstance(context_page, dict) else None
    return str(path).casefold() if path else None


def parse_event(raw: bytes, *, now: float, fallback_ts: float | None = None) -> Event | Rejection:
    """Validate one message against CONTRACTS section 2.

    `fallback_ts` (the broker's record time) stands in for a missing `timestamp`.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(
            "too_large", f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"not UTF-8 JSON: {exc}")
    if not isinstance(doc, dict):
        return Rejection("not_object", f"expected a JSON object, got {type(doc).__name__}")
    event_type = doc.get("type")
    if event_type not in EVENT_TYPES:
        return Rejection("unknown_type", f"type {event_type!r} is not one of {sorted(EVENT_TYPES)}")
    message_id = doc.get("messageId")
    if not isinstance(message_id, str | int) or isinstance(message_id, bool) or message_id == "":
        return Rejection("missing_message_id", "messageId is missing or empty")
    if not doc.get("userId") and not doc.get("anonymousId"):
        return Rejection("missing_identity", "neither userId nor anonymousId is set")
    stamp = doc.get("timestamp")
    if stamp is None:
        if fallback_ts is None:
            return Rejection("invalid_timestamp", "timestamp is missing")
        ts = fallback_ts
    else:
        try:
            ts = parse_iso(stamp) if isinstance(stamp, str) else float("nan")
        except ValueError:
            ts = float("nan")
        if ts != ts:
            return Rejection("invalid_timestamp", f"timestamp {stamp!r} is not ISO-8601")
    if ts > now + MAX_FUTURE_SECONDS:
        return Rejection("future_timestamp", f"timestamp {stamp!r} is more than 24 h ahead")
    if not _well_formed(doc, event_type):
        # The slow path, for bad input only: pydantic says exactly what is wrong.
        try:
            _SEGMENT.validate_python(doc)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            return Rejection("schema", problems)
    event = Event(
        type=event_type,
        message_id=_text(message_id),  # type: ignore[arg-type]
        user_id=_text(doc.get("userId")),
        anonymous_id=_text(doc.get("anonymousId")),
        ts=ts,
    )
    if event_type == "page":
        event.path = _page_path(doc)
        event.properties = doc.get("properties") or _EMPTY
    elif event_type == "track":
        event.event_name = doc["event"].casefold()
        event.properties = doc.get("properties") or _EMPTY
    elif event_type == "identify":
        event.traits = doc.get("traits") or {}
    elif event_type == "group":
        event.group_id = _text(doc["groupId"])
        event.traits = doc.get("traits") or {}
    else:
        event.previous_id = _text(doc["previousId"])
    return event


def _text(value: Any) -> str | None:
    """Ids as text: Segment allows numbers for them."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _is_id(value: Any, *, required: bool = False) -> bool:
    if value is None:
        return not required
    if isinstance(value, str):
        return 0 < len(value) <= 512 or (not required and value == "")
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_object(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def _well_formed(doc: dict[str, Any], event_type: str) -> bool:
    """The checks of schemas.events, written out: pydantic costs more than all the scoring
    of an event, and nearly every event is well formed."""
    if not (_is_id(doc.get("userId")) and _is_id(doc.get("anonymousId"))):
        return False
    if not (_is_id(doc.get("messageId"), required=True) and _is_object(doc.get("context"))):
        return False
    if event_type == "page":
        name = doc.get("name")
        return _is_object(doc.get("properties")) and (name is None or isinstance(name, str))
    if event_type == "track":
        name = doc.get("event")
        return isinstance(name, str) and 0 < len(name) <= 512 and _is_object(doc.get("properties"))
    if event_type == "identify":
        return _is_object(doc.get("traits"))
    if event_type == "group":
        return _is_id(doc.get("groupId"), required=True) and _is_object(doc.get("traits"))
    return _is_id(doc.get("previousId"), required=True) and _is_id(doc.get("userId"), required=True)
