"""Segment-compatible HTTP intake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from schemas import api
from services.app import ingest
from services.http.common import ERRORS, SEGMENT_CALLS
from services.http.deps import ContainerDep, Ingest

# Segment-compatible HTTP intake: events are validated, then published to lead-events.
# It answers 200 `{"accepted": n, "success": true}` as Segment's tracking API does: the
# Segment and RudderStack SDKs treat anything else as a failure.
router = APIRouter(prefix="/v1", tags=["ingest"], responses=ERRORS)


@router.post(
    "/batch",
    status_code=200,
    response_model=api.Accepted,
    responses={422: {"model": api.ErrorBody}},
)
async def batch(container: ContainerDep, body: api.SegmentBatch, _: Ingest) -> api.Accepted:
    """A Segment batch call: `{"batch": [event, ...]}`."""
    return await ingest.publish_events(container, body.batch)


def single_call(kind: str) -> Callable[..., Any]:
    async def single(container: ContainerDep, body: dict[str, Any], _: Ingest) -> api.Accepted:
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
