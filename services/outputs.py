"""Every record leadscore writes to Kafka, in one table.

Each row names the list of `Effects` that holds the records, the setting that names their
topic, the field that keys them (their partition and outbox lane, so one lead's or one
account's records stay in order) and the field that identifies them (a copy carries the same
id, and consumers drop it). The lead transaction's flush and the challenger's promotion turn
effects into outbox rows from it (services/pipeline/effects.py); the topic list, the metrics
and the AsyncAPI document read it. Adding an output topic: a row here, a topic setting, and
the code that produces the effect.

Dead letters are not effects (the consumer writes a refused message's own bytes); their topic
is `topic_dlq`, listed with the outputs in `output_topics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.settings import Settings


@dataclass(frozen=True)
class Output:
    effect: str  # the attribute of scoring_service.effects.Effects holding these records
    topic_setting: str  # the Settings field naming the topic
    key: str  # the record field that keys it
    record_id: str  # the record field that identifies it
    channel: str  # its channel in docs/asyncapi.yaml
    message: str  # its message there (a model in schemas.records)
    metric: str  # the Metrics counter that counts it after the commit
    labels: tuple[str, ...]  # the record fields that label that counter

    def topic(self, settings: Settings) -> str:
        return str(getattr(settings, self.topic_setting))


# In this order into the outbox: a lead's transition before the notification it caused.
OUTPUTS = (
    Output(
        "transitions",
        "topic_transitions",
        "lead_id",
        "transition_id",
        "leadStatusTransitions",
        "TransitionRecord",
        "transitions",
        ("from_stage", "to_stage", "reason"),
    ),
    Output(
        "notifications",
        "topic_notifications",
        "lead_id",
        "notification_id",
        "salesNotifications",
        "NotificationRecord",
        "notifications",
        ("type",),
    ),
    Output(
        "account_transitions",
        "topic_account_transitions",
        "account_id",
        "transition_id",
        "accountStatusTransitions",
        "AccountTransitionRecord",
        "account_transitions",
        ("to_stage",),
    ),
    Output(
        "account_notifications",
        "topic_notifications",
        "account_id",
        "notification_id",
        "salesNotifications",
        "AccountQualifiedRecord",
        "notifications",
        ("type",),
    ),
)


# Erasure records (services/pipeline/erasures.py): made by erasure requests, not by scoring,
# so they are not among the effects; keyed, identified and delivered to webhooks alike.
ERASURES = Output(
    "erasures",
    "topic_erasures",
    "lead_id",
    "erasure_id",
    "leadErasures",
    "ErasureRecord",
    "person_requests",  # counted per request (services/pipeline/erasures.py), not per record
    (),
)


def output_topics(settings: Settings) -> list[str]:
    """Every topic leadscore writes, each once: the table's, in its order, the erasures',
    then the DLQ."""
    topics = (output.topic(settings) for output in (*OUTPUTS, ERASURES))
    return [*dict.fromkeys(topics), settings.topic_dlq]


def all_topics(settings: Settings) -> list[str]:
    """Every topic leadscore reads or writes: the ones it creates at start-up."""
    return [settings.topic_events, *output_topics(settings), settings.topic_feedback]
