"""Segment-compatible HTTP intake."""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from schemas import api
from services.app import ingest
from services.app.container import Container
from services.http.common import ERRORS, SEGMENT_CALLS


def ingest_router(container: Container, Ingest: Any) -> APIRouter:
    """Segment-compatible HTTP intake: events are validated, then published to lead-events.

    It answers 200 `{"accepted": n, "success": true}` as Segment's tracking API does: the
    Segment and RudderStack SDKs treat anything else as a failure."""
    router = APIRouter(prefix="/v1", tags=["ingest"], responses=ERRORS)

    @router.post(
        "/batch",
        status_code=200,
        response_model=api.Accepted,
        responses={422: {"model": api.ErrorBody}},
    )
    async def batch(body: api.SegmentBatch, _: Ingest) -> dict[str, Any]:
        """A Segment batch call: `{"batch": [event, ...]}`."""
        return await ingest.publish_events(container, body.batch)

    def single_call(kind: str) -> Callable[..., Any]:
        async def single(body: dict[str, Any], _: Ingest) -> dict[str, Any]:
            return await ingest.publish_events(container, [{**body, "type": kind}])

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
