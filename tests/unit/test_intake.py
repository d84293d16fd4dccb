"""Validation of raw messages: each DLQ reason code, and the fields the engine reads."""

from __future__ import annotations

import orjson
import pytest

from scoring_service.intake import MAX_MESSAGE_BYTES, Event, Rejection, parse_event
from tests.helpers.factories import NOW

GOOD = {
    "type": "track",
    "messageId": "m1",
    "userId": "u1",
    "event": "Demo Requested",
    "timestamp": "2026-11-20T09:17:40+01:00",
}


def code_of(raw: bytes) -> str:
    result = parse_event(raw, now=NOW)
    assert isinstance(result, Rejection), result
    return result.code


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"\xff\xfe not utf-8", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_object"),
        (orjson.dumps({**GOOD, "type": "screen"}), "unknown_type"),
        (orjson.dumps({**GOOD, "messageId": True}), "missing_message_id"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "userId"}), "missing_identity"),
        (orjson.dumps({**GOOD, "timestamp": "yesterday"}), "invalid_timestamp"),
        (orjson.dumps({**GOOD, "timestamp": "2030-01-01T00:00:00Z"}), "future_timestamp"),
        (orjson.dumps({**GOOD, "event": ""}), "schema"),
        (orjson.dumps({**GOOD, "properties": "x" * MAX_MESSAGE_BYTES}), "too_large"),
    ],
)
def test_rejection_codes(raw, code):
    assert code_of(raw) == code


def test_good_event_is_normalised():
    event = parse_event(orjson.dumps(GOOD), now=NOW)
    assert isinstance(event, Event)
    assert event.event_name == "demo requested"
    assert event.timestamp == "2026-11-20T08:17:40Z"
    assert event.raw_id == "u1"


@pytest.mark.parametrize(
    "doc,path",
    [
        ({"properties": {"path": "/Pricing"}}, "/pricing"),
        ({"properties": {"url": "https://x.example/blog/a?b=1"}}, "/blog/a"),
        ({"properties": {}, "context": {"page": {"path": "/jobs"}}}, "/jobs"),
    ],
)
def test_page_path_fallbacks(doc, path):
    raw = orjson.dumps(
        {
            "type": "page",
            "messageId": "m",
            "anonymousId": "a",
            "timestamp": "2026-11-20T09:00:00Z",
            **doc,
        }
    )
    event = parse_event(raw, now=NOW)
    assert isinstance(event, Event) and event.path == path


@pytest.mark.parametrize(
    "doc,traits",
    [
        ({"traits": {"title": "Owner"}}, {"title": "Owner"}),
        # RudderStack's SDK: the traits only in context.traits.
        ({"context": {"traits": {"title": "CFO"}}}, {"title": "CFO"}),
        (
            {"traits": {"title": "Owner"}, "context": {"traits": {"title": "CFO"}}},
            {"title": "Owner"},
        ),
        ({"context": {"traits": "not an object"}}, {}),
        ({}, {}),
    ],
)
def test_identify_traits_come_from_the_top_else_from_context(doc, traits):
    raw = orjson.dumps(
        {"type": "identify", "messageId": "m", "userId": "u", "timestamp": GOOD["timestamp"], **doc}
    )
    event = parse_event(raw, now=NOW)
    assert isinstance(event, Event) and event.traits == traits


def test_missing_timestamp_takes_the_broker_time():
    raw = orjson.dumps({k: v for k, v in GOOD.items() if k != "timestamp"})
    event = parse_event(raw, now=NOW, fallback_ts=1_790_000_000.0)
    assert isinstance(event, Event) and event.ts == 1_790_000_000.0


def test_an_event_without_a_message_id_gets_one_made_from_its_bytes():
    raw = orjson.dumps({k: v for k, v in GOOD.items() if k != "messageId"})
    first, again = parse_event(raw, now=NOW), parse_event(raw, now=NOW)
    other = parse_event(raw.replace(b"u1", b"u2"), now=NOW)
    assert isinstance(first, Event) and isinstance(again, Event) and isinstance(other, Event)
    assert first.message_id.startswith("gen-") and first.message_id_generated
    assert first.message_id == again.message_id != other.message_id
    sent = parse_event(orjson.dumps(GOOD), now=NOW)
    assert isinstance(sent, Event) and not sent.message_id_generated


def test_without_a_timestamp_the_record_time_is_part_of_the_made_id():
    doc = {k: v for k, v in GOOD.items() if k not in ("messageId", "timestamp")}
    raw = orjson.dumps(doc)
    one, two = (parse_event(raw, now=NOW, fallback_ts=NOW - s) for s in (10, 20))
    assert isinstance(one, Event) and isinstance(two, Event)
    assert one.message_id != two.message_id


def test_every_problem_of_an_event_is_reported_at_once():
    doc = {k: v for k, v in GOOD.items() if k != "userId"}
    result = parse_event(orjson.dumps({**doc, "timestamp": "soon", "event": ""}), now=NOW)
    assert isinstance(result, Rejection)
    assert result.code == "missing_identity"
    assert "neither userId nor anonymousId" in result.detail
    assert "timestamp 'soon' is not ISO-8601" in result.detail
    assert "event: String should have at least 1 character" in result.detail
