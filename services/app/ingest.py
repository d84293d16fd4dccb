"""The Segment-compatible intake: events sent over HTTP, checked, then published to Kafka."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from scoring_service.intake import Rejection, parse_event
from services.app.container import Container
from services.app.errors import ApiError


async def publish_events(container: Container, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate every event, then publish them all to `lead-events` keyed as trackers key them;
    none when any is bad (422 with each problem and its index)."""
    now = time.time()
    problems = []
    encoded: list[bytes] = []
    for index, event in enumerate(events):
        try:
            encoded.append(orjson.dumps(event))
        except orjson.JSONEncodeError as exc:  # lone surrogates, nesting past 255
            problems.append({"index": index, "error": "invalid_text", "detail": str(exc)})
            continue
        parsed = parse_event(encoded[-1], now=now, fallback_ts=now)
        if isinstance(parsed, Rejection):
            problems.append({"index": index, "error": parsed.code, "detail": parsed.detail})
    if problems:
        # Nothing is published when any event is bad: the sender fixes and resends.
        raise ApiError(422, "invalid_events", problems)
    futures = []
    for event, value in zip(events, encoded, strict=True):
        key = event.get("userId") or event.get("anonymousId")
        futures.append(
            await container.producer.send(
                container.settings.topic_events, value, key=str(key).encode()
            )
        )
    await asyncio.gather(*futures)  # 200 only once the broker acknowledged them all
    return {"accepted": len(events), "success": True}
