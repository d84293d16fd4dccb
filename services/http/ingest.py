"""Segment-compatible HTTP intake."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter

from schemas import api
from scoring_service.intake import Rejection, parse_event
from services.bootstrap import Container
from services.http.common import ERRORS, SEGMENT_CALLS, ApiError


def ingest_router(container: Container, Ingest: Any) -> APIRouter:
    """Segment-compatible HTTP intake: events are validated, then published to lead-events.

    It answers 200 `{"accepted": n, "success": true}` as Segment's tracking API does: the
    Segment and RudderStack SDKs treat anything else as a failure."""
    router = APIRouter(prefix="/v1", tags=["ingest"], responses=ERRORS)
    settings = container.settings

    async def publish(events: list[dict[str, Any]]) -> dict[str, Any]:
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
                await container.producer.send(settings.topic_events, value, key=str(key).encode())
            )
        await asyncio.gather(*futures)  # 200 only once the broker acknowledged them all
        return {"accepted": len(events), "success": True}

    @router.post(
        "/batch",
        status_code=200,
        response_model=api.Accepted,
        responses={422: {"model": api.ErrorBody}},
    )
    async def batch(body: api.SegmentBatch, _: Ingest) -> dict[str, Any]:
        """A Segment batch call: `{"batch": [event, ...]}`."""
        return await publish(body.batch)

    def single_call(kind: str) -> Callable[..., Any]:
        async def single(body: dict[str, Any], _: Ingest) -> dict[str, Any]:
            return await publish([{**body, "type": kind}])

        single.__doc__ = f"A Segment {kind} call."
        return single

    for kind in SEGMENT_CALLS:
        router.add_api_route(
            f"/{kind}",
            single_call(kind),
            methods=["POST"],
            status_code=200,
            response_model=api.Accepted,
            responses={422: {"model": api.ErrorBody}},
            name=f"ingest_{kind}",
        )
    return router
