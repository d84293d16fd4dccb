"""No message, however malformed, makes the pure pipeline raise or produce unstorable state."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from scoring_service.engine import Engine
from scoring_service.intake import Event, Rejection, parse_event
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_ruleset
from tests.helpers.factories import NOW
from tests.helpers.hostile import hostile_message

ENGINE = Engine(starter_ruleset())


def _storable(value: object) -> None:
    """What the store would write: JSON the encoder accepts, without NUL."""
    text = orjson.dumps(value, default=str)
    assert b"\\u0000" not in text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_message())
def test_any_message_is_an_event_or_a_rejection_and_scoring_never_raises(raw):
    result = parse_event(raw, now=NOW, fallback_ts=NOW - 60)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.code != "processing_error", result.detail  # every case has its own code
        return
    replay = Replay(ENGINE)
    replay.feed([result], now=NOW)
    for state in replay.ws.leads.values():
        _storable(state.traits)
    for account in replay.ws.accounts.values():
        _storable(account.traits)
    _storable(replay.transitions)


@pytest.mark.parametrize(
    "doc,code",
    [
        ({"type": [], "messageId": "m", "userId": "u"}, "unknown_type"),
        (
            {"type": "page", "messageId": "m", "userId": "u", "properties": {"url": "http://[::1"}},
            "schema",
        ),
        ({"type": "page", "messageId": "m", "userId": "u\x00"}, "invalid_text"),
        ({"type": "track", "messageId": "m", "userId": "u", "event": "a\x00"}, "invalid_text"),
        (
            {"type": "identify", "messageId": "m", "userId": "u", "traits": {"k\x00": 1}},
            "invalid_text",
        ),
        (
            {
                "type": "page",
                "messageId": "m",
                "userId": "u",
                "timestamp": "0001-01-01T00:00:00+14:00",
            },
            "invalid_timestamp",
        ),
        (
            {
                "type": "page",
                "messageId": "m",
                "userId": "u",
                "timestamp": "9999-12-31T23:59:59-14:00",
            },
            "future_timestamp",
        ),
    ],
)
def test_each_trigger_of_the_crash_reports_has_its_own_code(doc, code):
    result = parse_event(orjson.dumps(doc), now=NOW, fallback_ts=NOW)
    assert isinstance(result, Rejection) and result.code == code, result


def test_nesting_beyond_the_limit_is_refused_before_the_encoder_sees_it():
    raw = (
        b'{"type":"identify","messageId":"m","userId":"u","traits":'
        + b'{"a":' * 300
        + b"1"
        + b"}" * 301
    )
    result = parse_event(raw, now=NOW, fallback_ts=NOW)
    assert isinstance(result, Rejection) and result.code == "too_deep"


def test_a_record_time_before_year_one_is_refused_when_the_json_has_none():
    raw = orjson.dumps({"type": "page", "messageId": "m", "userId": "u"})
    result = parse_event(raw, now=NOW, fallback_ts=-62_200_000_000.0)
    assert isinstance(result, Rejection) and result.code == "invalid_timestamp"


def test_a_trait_given_as_an_object_where_a_rule_expects_text_does_not_match():
    replay = Replay(ENGINE)
    for doc in (
        {
            "type": "identify",
            "messageId": "m1",
            "userId": "u",
            "timestamp": "2026-11-01T00:00:00Z",
            "traits": {"company": {"country": {}}, "title": ["x", {"y": 1}], "email": 5},
        },
    ):
        event = parse_event(orjson.dumps(doc), now=NOW)
        assert isinstance(event, Event)
        replay.feed([event], now=NOW)
    assert replay.ws.leads["u"].fit == 0
