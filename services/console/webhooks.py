"""Outbound endpoints in the console (admins): the list with each endpoint's backlog, a new
webhook (its signing secret shown once), pause and resume, the delivery log, re-delivery.
CRM writers (HubSpot, Salesforce) are made over the API, where their mapping is written out;
they are listed, paused and re-delivered here like webhooks. The use cases are
services/app/webhooks, shared with the HTTP API."""
# No "from __future__ import annotations": FastAPI must see the parameter types.

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import ValidationError

from schemas.webhooks import EndpointCreate, EndpointUpdate
from services.app import webhooks
from services.app.errors import ApiError
from services.console.pages import PagesDep

_ENDPOINT_ID = Path(pattern=r"^ep_[0-9a-f]{16}$")
RECORD_KINDS = ("transitions", "notifications", "account_transitions", "account_notifications")
STATES = ("pending", "delivered", "failed", "skipped")

router = APIRouter()


@router.get("/webhooks")
async def webhooks_page(request: Request, ui: PagesDep) -> Response:
    user = await ui.admin_of(request)
    listing = await webhooks.list_endpoints(ui.container)
    return ui.page(request, "webhooks.html", user, endpoints=listing.items, kinds=RECORD_KINDS)


@router.post("/webhooks")
async def new_webhook(request: Request, ui: PagesDep) -> Response:
    user, form = await ui.posted(request, admin=True)
    try:
        body = EndpointCreate.model_validate(
            {
                "name": form.get("name"),
                "url": form.get("url"),
                "records": [k for k in RECORD_KINDS if form.get(f"record_{k}")],
            }
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ApiError(422, "invalid_request", f"{where}: {problem['msg']}") from None
    made = await webhooks.create_endpoint(ui.container, body, user.name)
    listing = await webhooks.list_endpoints(ui.container)
    return ui.page(
        request,
        "webhooks.html",
        user,
        endpoints=listing.items,
        kinds=RECORD_KINDS,
        created=made,
    )


@router.get("/webhooks/{endpoint_id}")
async def endpoint_page(
    request: Request, ui: PagesDep, endpoint_id: Annotated[str, _ENDPOINT_ID]
) -> Response:
    user = await ui.admin_of(request)
    state = request.query_params.get("state")
    state = state if state in STATES else None
    endpoint = await webhooks.get_endpoint(ui.container, endpoint_id)
    log = await webhooks.delivery_log(
        ui.container, endpoint_id, state=state, subject=None, cursor=None, limit=200
    )
    return ui.page(
        request,
        "webhook.html",
        user,
        endpoint=endpoint,
        deliveries=log.items,
        state=state,
        states=STATES,
    )


@router.post("/webhooks/{endpoint_id}/pause")
async def pause(
    request: Request, ui: PagesDep, endpoint_id: Annotated[str, _ENDPOINT_ID]
) -> Response:
    user, form = await ui.posted(request, admin=True)
    paused = form.get("paused") == "true"
    await webhooks.update_endpoint(
        ui.container, endpoint_id, EndpointUpdate(paused=paused), user.name
    )
    notice = "Paused: deliveries wait." if paused else "Resumed."
    return ui.to(f"/webhooks/{endpoint_id}", notice=notice)


@router.post("/webhooks/{endpoint_id}/redeliver")
async def redeliver(
    request: Request, ui: PagesDep, endpoint_id: Annotated[str, _ENDPOINT_ID]
) -> Response:
    user, form = await ui.posted(request, admin=True)
    one = form.get("delivery_id")
    if isinstance(one, str) and one.isdigit():
        queued = await webhooks.redeliver(
            ui.container, endpoint_id, delivery_id=int(one), failed_since=None, by=user.name
        )
    else:
        since = datetime.now(UTC) - timedelta(days=7)
        queued = await webhooks.redeliver(
            ui.container, endpoint_id, delivery_id=None, failed_since=since, by=user.name
        )
    return ui.to(f"/webhooks/{endpoint_id}", notice=f"{queued.queued} queued again.")
