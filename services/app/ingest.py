"""The Segment-compatible intake: events sent over HTTP, checked, then published to Kafka."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import orjson

from schemas import api
from scoring_service.intake import Rejection, parse_event
from services.app.container import Container
from services.app.errors import ApiError


async def publish_events(container: Container, events: list[dict[str, Any]]) -> api.Accepted:
    """Check every event, then publish them to `lead-events` keyed as trackers key them.

    A batch keeps its good events: an SDK drops a whole batch on a 4xx, so one bad event
    must not cost the others. The SDK reads nothing but the 200, so the refused ones of such
    a batch travel too, and the consumer puts them on the dead-letter topic with the same
    reason (one place decides, with the record's offset to find it by); the answer names
    each one and why. When every event is refused, nothing is published: the 422 is the
    sender's whole answer."""
    now = time.time()
    refused = []
    encoded: list[bytes] = []
    for index, event in enumerate(events):
        try:
            value = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:  # lone surrogates, nesting past 255
            refused.append({"index": index, "error": "invalid_text", "detail": str(exc)})
            encoded.append(_escaped(event))
            continue
        encoded.append(value)
        parsed = parse_event(value, now=now, fallback_ts=now)
        if isinstance(parsed, Rejection):
            refused.append({"index": index, "error": parsed.code, "detail": parsed.detail})
    if len(refused) == len(events):
        raise ApiError(422, "invalid_events", refused)
    futures = []
    limit = container.settings.max_record_bytes
    for event, value in zip(events, encoded, strict=True):
        if len(value) > limit:
            continue  # refused as too_large, and more than the broker takes: named only
        key = event.get("userId") or event.get("anonymousId")
        futures.append(
            await container.producer.send(
                container.settings.topic_events,
                value,
                key=str(key).encode() if isinstance(key, str | int | float) else None,
            )
        )
    await asyncio.gather(*futures)  # answered only once the broker acknowledged them all
    return api.Accepted.model_validate(
        {"accepted": len(events) - len(refused), "success": True, "refused": refused},
    )


def _escaped(event: dict[str, Any]) -> bytes:
    """An event orjson cannot encode, as ASCII JSON with its lone surrogates escaped (the
    consumer refuses it as invalid_json), or `null` when even that fails (too deep)."""
    try:
        return json.dumps(event, default=str).encode()
    except (ValueError, TypeError, RecursionError):
        return b"null"
