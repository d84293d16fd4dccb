"""Outbound endpoints (admin): signed webhooks and CRM writers, their delivery logs and
re-delivery. Each route parses the request and calls a use case (services/app/webhooks)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from schemas import webhooks as schema
from services.app import webhooks
from services.http.common import ERRORS, NOT_FOUND
from services.http.deps import Admin, ContainerDep

_ENDPOINT_ID = Path(pattern=r"^ep_[0-9a-f]{16}$", description="an endpoint id as listed")

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS)


@router.post("", status_code=201, response_model=schema.EndpointCreated)
async def create(
    container: ContainerDep, body: schema.EndpointCreate, admin: Admin
) -> schema.EndpointCreated:
    """A webhook endpoint (its signing secret is in this answer, and only here) or a
    HubSpot / Salesforce writer with its token and field mapping; audited."""
    return await webhooks.create_endpoint(container, body, admin.name)


@router.get("", response_model=schema.EndpointList)
async def listing(container: ContainerDep, _: Admin) -> schema.EndpointList:
    """Every endpoint, with its deliveries waiting and set aside."""
    return await webhooks.list_endpoints(container)


@router.get("/{endpoint_id}", response_model=schema.Endpoint, responses=NOT_FOUND)
async def one(
    container: ContainerDep, endpoint_id: Annotated[str, _ENDPOINT_ID], _: Admin
) -> schema.Endpoint:
    return await webhooks.get_endpoint(container, endpoint_id)


@router.patch("/{endpoint_id}", response_model=schema.Endpoint, responses=NOT_FOUND)
async def change(
    container: ContainerDep,
    endpoint_id: Annotated[str, _ENDPOINT_ID],
    body: schema.EndpointUpdate,
    admin: Admin,
) -> schema.Endpoint:
    """Change, pause (`paused: true`: deliveries queue up) or resume an endpoint."""
    return await webhooks.update_endpoint(container, endpoint_id, body, admin.name)


@router.delete("/{endpoint_id}", response_model=schema.EndpointDeleted, responses=NOT_FOUND)
async def remove(
    container: ContainerDep, endpoint_id: Annotated[str, _ENDPOINT_ID], admin: Admin
) -> dict[str, Any]:
    """Delete an endpoint and its deliveries; audited."""
    await webhooks.delete_endpoint(container, endpoint_id, admin.name)
    return {"deleted": endpoint_id}


@router.get("/{endpoint_id}/deliveries", response_model=schema.DeliveryList, responses=NOT_FOUND)
async def log(
    container: ContainerDep,
    endpoint_id: Annotated[str, _ENDPOINT_ID],
    _: Admin,
    state: schema.DeliveryState | None = None,
    subject: Annotated[str | None, Query(max_length=200, description="a lead or account")] = None,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> schema.DeliveryList:
    """The endpoint's delivery log, newest first: each record's state, attempts, last
    answer (status, latency, body excerpt) and reason."""
    return await webhooks.delivery_log(
        container, endpoint_id, state=state, subject=subject, cursor=cursor, limit=limit
    )


@router.post("/{endpoint_id}/redeliver", response_model=schema.Redelivered, responses=NOT_FOUND)
async def redeliver(
    container: ContainerDep,
    endpoint_id: Annotated[str, _ENDPOINT_ID],
    body: schema.Redeliver,
    admin: Admin,
) -> schema.Redelivered:
    """Deliver again now: one delivery, or every one set aside since a time (each with
    a fresh retry window, under its same webhook-id); audited."""
    return await webhooks.redeliver(
        container,
        endpoint_id,
        delivery_id=body.delivery_id,
        failed_since=body.failed_since,
        by=admin.name,
    )
