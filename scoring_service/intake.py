"""Parsing raw `lead-events` messages into events, or into a reason for the DLQ. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas.events import EVENT_TYPES, AnySegmentEvent
from schemas.records import DeadLetterCode
from schemas.rule_set import CONTEXT_KEYS
from schemas.timefmt import iso, parse_iso

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FUTURE_SECONDS = 24 * 3600.0
# Event times before this are typing errors or defaults (0001-01-01), not behaviour to score;
# they would also break date arithmetic at the edges of the calendar.
MIN_EVENT_TIME = 946_684_800.0  # 2000-01-01T00:00:00Z
# Nesting deeper than this is no Segment payload; it would also exceed what the JSON encoder
# writes back (orjson stops at 255 levels) when the state is stored.
MAX_DEPTH = 32
# Keys and values of one event, all levels together. 64 KiB allow about 8,000 tiny ones.
MAX_NODES = 5_000
_SEGMENT = TypeAdapter(AnySegmentEvent)
_EMPTY: dict[str, Any] = {}
# Browsers' user agents are 100-300 characters; a crawler's name is near the start.
MAX_USER_AGENT = 1000


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
    # The parts of Segment's context that rules can read (schemas.rule_set.CONTEXT_KEYS).
    context: dict[str, Any] | None = None
    # context.userAgent, to tell crawlers from people (at most MAX_USER_AGENT characters).
    user_agent: str | None = None
    # Sent without a messageId: the intake made one (generated_message_id).
    message_id_generated: bool = False

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
    for name in ("event_name", "path", "properties", "traits", "group_id", "context"):
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
        context=doc.get("context"),
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message goes to the DLQ: a short machine code and a sentence for humans."""

    code: DeadLetterCode
    detail: str


def _page_path(doc: dict[str, Any]) -> str | None:
    """The page's path: properties.path, else the path of properties.url, else context.page.
    Raises ValueError for a URL that cannot be split (the caller rejects the event)."""
    properties = doc.get("properties") or _EMPTY
    path = properties.get("path")
    if not path and properties.get("url"):
        url = properties["url"]
        if not isinstance(url, str):
            raise ValueError("properties.url is not text")
        path = urlsplit(url).path
    if not path:
        context_page = (doc.get("context") or _EMPTY).get("page") or _EMPTY
        path = context_page.get("path") if isinstance(context_page, dict) else None
    if path and not isinstance(path, str | int | float):
        raise ValueError("the page path is not text")
    return str(path).casefold() if path else None


def _may_break_limits(raw: bytes) -> bool:
    """Whether the exact walk is needed, decided on the raw bytes at C speed. NUL can only be
    written escaped in JSON; nesting needs brackets; 5,000 nodes need 10,000 bytes. Nearly
    every event passes all three and skips the walk."""
    return (
        b"\\u0000" in raw
        or len(raw) >= 2 * MAX_NODES
        or raw.count(b"{") + raw.count(b"[") > MAX_DEPTH
    )


def _structure_problem(doc: dict[str, Any]) -> Rejection | None:
    """Depth, size and text the database cannot store, for the whole document.

    PostgreSQL refuses NUL in text and jsonb, and would refuse the whole batch with it; the
    JSON decoder has already refused lone surrogates. One walk with an explicit stack, so a
    deep document cannot exhaust Python's own stack.
    """
    stack: list[tuple[Any, int]] = [(doc, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return Rejection("too_complex", f"more than {MAX_NODES} keys and values")
        if isinstance(value, str):
            if "\x00" in value:
                return Rejection("invalid_text", "a text value contains the NUL character")
        elif isinstance(value, dict):
            if depth > MAX_DEPTH:
                return Rejection("too_deep", f"objects nest deeper than {MAX_DEPTH} levels")
            for key, item in value.items():
                if "\x00" in key:
                    return Rejection("invalid_text", "a key contains the NUL character")
                if isinstance(item, dict | list | str):
                    stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                return Rejection("too_deep", f"arrays nest deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list | str))
    return None


def parse_event(raw: bytes, *, now: float, fallback_ts: float | None = None) -> Event | Rejection:
    """Validate one message (docs/reference/topics.md); never raises.

    Anything the rest of the pipeline would trip over is refused here with its own code; a
    failure nobody foresaw still becomes a rejection (`processing_error`), never an exception
    that could stop the consumer.
    """
    try:
        return _parse_event(raw, now=now, fallback_ts=fallback_ts)
    except Exception as exc:  # the last line of defence: see the docstring
        return Rejection("processing_error", f"{type(exc).__name__}: {exc}"[:500])


def _parse_event(raw: bytes, *, now: float, fallback_ts: float | None) -> Event | Rejection:
    """`fallback_ts` (the broker's record time) stands in for a missing `timestamp`."""
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
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        return Rejection("unknown_type", f"type {event_type!r} is not one of {sorted(EVENT_TYPES)}")
    message_id = doc.get("messageId")
    generated = message_id is None or message_id == ""
    if generated:
        # Segment's tracking API fills in a missing messageId; so does the intake, from the
        # message's bytes (and the record time standing in for a missing timestamp), so a
        # redelivered copy gets the same id and is still dropped as a duplicate.
        message_id = generated_message_id(raw, None if "timestamp" in doc else fallback_ts)
    problems: list[Rejection] = []
    if not isinstance(message_id, str | int) or isinstance(message_id, bool):
        problems.append(Rejection("missing_message_id", "messageId is not text or a number"))
    if not doc.get("userId") and not doc.get("anonymousId"):
        problems.append(
            Rejection("missing_identity", "neither userId nor anonymousId is set: whose is it?")
        )
    ts = _event_time(doc, now, fallback_ts, problems)
    if _may_break_limits(raw):
        problem = _structure_problem(doc)
        if problem is not None:
            return problem  # nothing more is read from such a document
    if not _well_formed(doc, event_type):
        # The slow path, for bad input only: pydantic says exactly what is wrong.
        try:
            _SEGMENT.validate_python(doc)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            problems.append(Rejection("schema", details))
    if problems:
        # Every problem at once, so the sender fixes the event in one go; the first names it.
        return Rejection(problems[0].code, "; ".join(p.detail for p in problems))
    event = Event(
        type=event_type,
        message_id=_text(message_id),  # type: ignore[arg-type]
        user_id=_text(doc.get("userId")),
        anonymous_id=_text(doc.get("anonymousId")),
        ts=ts,
        message_id_generated=generated,
    )
    context = doc.get("context")
    if context:
        kept = {key: context[key] for key in CONTEXT_KEYS if key in context}
        if kept:
            event.context = kept
        agent = context.get("userAgent")
        if isinstance(agent, str):
            event.user_agent = agent[:MAX_USER_AGENT]
    if event_type == "page":
        try:
            event.path = _page_path(doc)
        except ValueError as exc:
            return Rejection("schema", f"properties.url: {exc}")
        event.properties = doc.get("properties") or _EMPTY
    elif event_type == "track":
        event.event_name = doc["event"].casefold()
        event.properties = doc.get("properties") or _EMPTY
    elif event_type == "identify":
        # RudderStack's SDKs send an identify's traits in context.traits only (the spec's
        # place for the user's traits on any call); Segment's send them at the top.
        traits = doc.get("traits") or (context.get("traits") if context else None)
        event.traits = traits if isinstance(traits, dict) else {}
    elif event_type == "group":
        event.group_id = _text(doc["groupId"])
        event.traits = doc.get("traits") or {}
    else:
        event.previous_id = _text(doc["previousId"])
    return event


def generated_message_id(raw: bytes, record_time: float | None) -> str:
    """The id of a message sent without one: the same bytes always get the same id."""
    digest = hashlib.blake2b(raw, digest_size=16)
    if record_time is not None:
        digest.update(repr(record_time).encode())
    return "gen-" + digest.hexdigest()


def _event_time(
    doc: dict[str, Any], now: float, fallback_ts: float | None, problems: list[Rejection]
) -> float:
    """The event's time (`fallback_ts`, the broker's record time, stands in for a missing
    `timestamp`); a problem with it is added to `problems`."""
    stamp = doc.get("timestamp")
    if stamp is None:
        if fallback_ts is None:
            problems.append(Rejection("invalid_timestamp", "timestamp is missing"))
            return now
        ts = fallback_ts
    else:
        try:
            ts = parse_iso(stamp) if isinstance(stamp, str) else float("nan")
        except (ValueError, OverflowError):
            ts = float("nan")
        if ts != ts:
            problems.append(Rejection("invalid_timestamp", f"timestamp {stamp!r} is not ISO-8601"))
            return now
    if ts > now + MAX_FUTURE_SECONDS:
        problems.append(
            Rejection("future_timestamp", f"timestamp {stamp!r} is more than 24 h ahead")
        )
    elif not ts >= MIN_EVENT_TIME:  # also catches NaN from a broken record time
        shown = stamp if stamp is not None else f"record time {fallback_ts!r}"
        problems.append(Rejection("invalid_timestamp", f"timestamp {shown!r} is before 2000-01-01"))
    return ts


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
    if not (_is_id(doc.get("messageId")) and _is_object(doc.get("context"))):
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
