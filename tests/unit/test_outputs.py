"""The one table of outputs: the outbox rows, the topic list and the counters all follow it."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from scoring_service.effects import Effects
from services.metrics import Metrics
from services.outputs import OUTPUTS, output_topics
from services.pipeline.effects import outbox_rows
from services.settings import Settings

SETTINGS = Settings(
    topic_transitions="t-leads", topic_notifications="t-notes", topic_account_transitions="t-acc"
)


def effects() -> Effects:
    e = Effects()
    record: Any = {
        "transition_id": "u-1:1",
        "lead_id": "u-1",
        "from_stage": "lead",
        "to_stage": "mql",
        "reason": "score_threshold",
    }
    e.transitions.append(record)
    e.notifications.append(
        {"notification_id": "u-1:1:promotion", "lead_id": "u-1", "type": "promotion"}
    )
    e.account_transitions.append({"transition_id": "a-1:1", "account_id": "a-1", "to_stage": "mqa"})
    e.account_notifications.append(
        {"notification_id": "a-1:1:mqa", "account_id": "a-1", "type": "account_qualified"}
    )
    return e


def test_each_record_becomes_a_row_on_its_topic_keyed_and_identified_as_the_table_says() -> None:
    rows = outbox_rows(effects(), SETTINGS)

    assert [(r.topic, r.key, r.record_id) for r in rows] == [
        ("t-leads", b"u-1", "u-1:1"),
        ("t-notes", b"u-1", "u-1:1:promotion"),
        ("t-acc", b"a-1", "a-1:1"),
        ("t-notes", b"a-1", "a-1:1:mqa"),
    ]
    assert orjson.loads(rows[0].value)["to_stage"] == "mql"


def test_no_effects_no_rows() -> None:
    assert outbox_rows(Effects(), SETTINGS) == []


def test_the_topic_list_names_each_output_topic_once_then_the_erasures_then_the_dlq() -> None:
    assert output_topics(SETTINGS) == [
        "t-leads",
        "t-notes",
        "t-acc",
        SETTINGS.topic_erasures,
        SETTINGS.topic_dlq,
    ]
    assert {o.topic(SETTINGS) for o in OUTPUTS} <= set(output_topics(SETTINGS))


def test_the_counters_count_each_record_with_the_fields_the_table_names() -> None:
    metrics = Metrics(CollectorRegistry())

    metrics.count_records(effects())

    assert metrics.transitions.labels("lead", "mql", "score_threshold")._value.get() == 1
    assert metrics.notifications.labels("promotion")._value.get() == 1
    assert metrics.notifications.labels("account_qualified")._value.get() == 1
    assert metrics.account_transitions.labels("mqa")._value.get() == 1
