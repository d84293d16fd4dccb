"""The AsyncAPI 3 document of every topic leadscore reads and writes (docs/asyncapi.yaml).

The payload and header schemas are generated from the pydantic models in `schemas/`, so the
document cannot drift from the code: a test regenerates it and compares. To refresh the file
after changing a model: `python -m services.adapters.asyncapi > docs/asyncapi.yaml`.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from schemas.events import AnySegmentEvent
from schemas.records import (
    AccountQualifiedRecord,
    AccountTransitionRecord,
    DeadLetterHeaders,
    ErasureRecord,
    FeedbackRecord,
    NotificationRecord,
    TransitionRecord,
)
from schemas.webhooks import WebhookHeaders, WebhookMessage
from services import __version__
from services.outputs import ERASURES, OUTPUTS
from services.settings import Settings

REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    """Every payload and header schema, with their shared parts, under one `$defs` space."""
    # What leadscore reads is described as it validates it; what it writes, as it writes it.
    named: dict[str, tuple[Any, JsonSchemaMode]] = {
        "SegmentEvent": (TypeAdapter(AnySegmentEvent), "validation"),
        "FeedbackRecord": (FeedbackRecord, "validation"),
        "TransitionRecord": (TransitionRecord, "serialization"),
        "NotificationRecord": (NotificationRecord, "serialization"),
        "AccountTransitionRecord": (AccountTransitionRecord, "serialization"),
        "AccountQualifiedRecord": (AccountQualifiedRecord, "serialization"),
        "ErasureRecord": (ErasureRecord, "serialization"),
        "DeadLetterHeaders": (DeadLetterHeaders, "serialization"),
        "WebhookHeaders": (WebhookHeaders, "serialization"),
        "WebhookMessage": (WebhookMessage, "serialization"),
    }
    schemas: dict[str, Any] = {}
    for name, (model, mode) in named.items():
        adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
        schema = adapter.json_schema(ref_template=REF, mode=mode)
        schemas.update(schema.pop("$defs", {}))
        if isinstance(model, type) and issubclass(model, BaseModel):
            schema.setdefault("title", name)
        schemas[name] = schema
    return dict(sorted(schemas.items()))


def _key(description: str) -> dict[str, Any]:
    return {"kafka": {"key": {"type": "string", "description": description}}}


# The output channels in the document's order, with what a consumer of each can rely on.
OUTPUT_CHANNELS = {
    "leadStatusTransitions": "Stage changes, at least once, in order per lead",
    "accountStatusTransitions": "Account stage changes, at least once, in order per account",
    "salesNotifications": (
        "What sales must act on, at least once, in order per lead (and per account)"
    ),
    "leadErasures": (
        "Leads erased on request, at least once: erase them downstream too "
        "(docs/operations/personal-data.md)"
    ),
}


def build_document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for the topic names in `settings` (the defaults if None)."""
    settings = settings or Settings()
    lead_key = "the lead id (records of one lead keep their order)"
    account_key = "the account id (records of one account keep their order)"
    messages = {
        "SegmentEvent": {
            "name": "SegmentEvent",
            "title": "A Segment call (page, track, identify, group, alias)",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="SegmentEvent")},
            "bindings": _key("userId, else anonymousId (not relied on)"),
        },
        "FeedbackRecord": {
            "name": "FeedbackRecord",
            "title": "A sales outcome for a lead; idempotent on feedback_id",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="FeedbackRecord")},
            "bindings": _key("the lead id (not relied on)"),
        },
        "TransitionRecord": {
            "name": "TransitionRecord",
            "title": "A lifecycle stage change",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="TransitionRecord")},
            "bindings": _key(lead_key),
        },
        "NotificationRecord": {
            "name": "NotificationRecord",
            "title": "A hand-off to sales, or a missed follow-up deadline",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="NotificationRecord")},
            "bindings": _key(lead_key),
        },
        "AccountTransitionRecord": {
            "name": "AccountTransitionRecord",
            "title": "An account stage change, with its score parts and buying committee",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="AccountTransitionRecord")},
            "bindings": _key(account_key),
        },
        "AccountQualifiedRecord": {
            "name": "AccountQualifiedRecord",
            "title": "An account reached mqa: its owner should engage the committee",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="AccountQualifiedRecord")},
            "bindings": _key(account_key),
        },
        "ErasureRecord": {
            "name": "ErasureRecord",
            "title": "A lead erased on request; erase your copies of it",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model="ErasureRecord")},
            "bindings": _key(lead_key),
        },
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "A message that could not be used, with the reason in its headers",
            "contentType": "application/octet-stream",
            "headers": {"$ref": REF.format(model="DeadLetterHeaders")},
            "payload": {"description": "the refused message's original bytes"},
            "bindings": _key("the refused message's key"),
        },
        "WebhookMessage": {
            "name": "WebhookMessage",
            "title": "A record delivered to a webhook endpoint, signed (Standard Webhooks)",
            "contentType": "application/json",
            "headers": {"$ref": REF.format(model="WebhookHeaders")},
            "payload": {"$ref": REF.format(model="WebhookMessage")},
            "bindings": {"http": {"method": "POST"}},
        },
    }
    channels: dict[str, tuple[str, list[str], str]] = {
        "leadEvents": (settings.topic_events, ["SegmentEvent"], "Events to score"),
        "salesFeedback": (settings.topic_feedback, ["FeedbackRecord"], "Sales outcomes"),
    }
    # The outputs' channels, their topics and messages from the one table of outputs.
    for name, description in OUTPUT_CHANNELS.items():
        outputs = [o for o in (*OUTPUTS, ERASURES) if o.channel == name]
        channels[name] = (outputs[0].topic(settings), [o.message for o in outputs], description)
    channels["deadLetters"] = (settings.topic_dlq, ["DeadLetter"], "Refused messages and why")
    channels["webhooks"] = (
        "{endpointUrl}",
        ["WebhookMessage"],
        "HTTP POSTs to each webhook endpoint an admin made (/v1/webhooks), at least once, "
        "in order per lead and per account (docs/reference/contracts.md, Outbound deliveries)",
    )
    receives = {"leadEvents", "salesFeedback"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "leadscore",
            "version": __version__,
            "description": (
                "Lead scoring over Kafka: Segment events and sales feedback in; lifecycle "
                "transitions, sales notifications and dead letters out. "
                "docs/reference/contracts.md explains the meaning; this document gives the "
                "shapes."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "channels": {
            name: {
                "address": topic,
                "description": description,
                "messages": {
                    message: {"$ref": f"#/components/messages/{message}"} for message in names
                },
            }
            for name, (topic, names, description) in channels.items()
        },
        "operations": {
            ("consume" if name in receives else "publish") + name[0].upper() + name[1:]: {
                "action": "receive" if name in receives else "send",
                "channel": {"$ref": f"#/channels/{name}"},
            }
            for name in channels
        },
        "components": {"messages": messages, "schemas": _schemas()},
    }


def render(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(render(build_document()))
