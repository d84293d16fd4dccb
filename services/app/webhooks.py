"""Outbound endpoints as admins manage them (API and console): create one (its signing
secret shown once), change, pause, delete it, read its delivery log, re-deliver. Every
change is audited; secrets and tokens are stored encrypted and never returned again."""

from __future__ import annotations

import secrets as random
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from schemas import webhooks as schema
from schemas.webhooks import EndpointCreate, EndpointSettings, EndpointUpdate
from services.adapters import outbound
from services.adapters.postgres import webhook_store
from services.adapters.postgres.db import connection, transaction
from services.adapters.postgres.rule_set_store import record_audit
from services.adapters.secrets import new_signing_secret
from services.app.container import Container
from services.app.errors import ApiError


def check_url(container: Container, url: str) -> None:
    """Refuse a URL the dispatcher would refuse (what DNS says is checked at delivery)."""
    settings = container.settings
    try:
        outbound.target(
            url,
            allow_http=settings.outbound_allow_http,
            allow_private=settings.outbound_allow_private,
        )
    except outbound.Refused as exc:
        raise ApiError(422, "url_refused", str(exc)) from None


def _invalid(exc: ValidationError) -> ApiError:
    problems = [
        {"loc": ".".join(str(p) for p in error["loc"]) or "body", "msg": error["msg"]}
        for error in exc.errors()
    ]
    return ApiError(422, "invalid_request", problems)


def not_found() -> ApiError:
    return ApiError(404, "endpoint_not_found", "there is no such endpoint")


async def create_endpoint(
    container: Container, body: EndpointCreate, by: str
) -> schema.EndpointCreated:
    check_url(container, body.url)
    secret = new_signing_secret() if body.kind == "webhook" else body.token
    assert secret is not None  # the body's validation asks a CRM writer for its token
    fields = body.model_dump(exclude={"token"})
    endpoint_id = "ep_" + random.token_hex(8)
    async with transaction(container.db) as pg:
        if await webhook_store.count_endpoints(pg) >= container.settings.webhook_max_endpoints:
            raise ApiError(
                409,
                "too_many_endpoints",
                f"at most {container.settings.webhook_max_endpoints} endpoints",
            )
        row = await webhook_store.create_endpoint(
            pg, endpoint_id, fields, container.vault.seal(secret), by
        )
        await record_audit(
            pg,
            actor=by,
            action="endpoint.create",
            target=endpoint_id,
            detail={"kind": body.kind, "url": body.url, "records": body.records},
        )
    doc = webhook_store.endpoint_doc(row)
    # The signing secret this once; a CRM token is the admin's own and never comes back.
    doc["secret"] = secret if body.kind == "webhook" else None
    return schema.EndpointCreated.model_validate(doc)


async def list_endpoints(container: Container) -> schema.EndpointList:
    async with connection(container.db) as pg:
        rows = await webhook_store.endpoints(pg)
    return schema.EndpointList.model_validate(
        {"items": [webhook_store.endpoint_doc(r) for r in rows]}
    )


async def get_endpoint(container: Container, endpoint_id: str) -> schema.Endpoint:
    async with connection(container.db) as pg:
        row = await webhook_store.endpoint(pg, endpoint_id)
    if row is None:
        raise not_found()
    return schema.Endpoint.model_validate(webhook_store.endpoint_doc(row))


async def update_endpoint(
    container: Container, endpoint_id: str, body: EndpointUpdate, by: str
) -> schema.Endpoint:
    """Change an endpoint: the changes are merged into it and the result is validated by
    the model a create uses (EndpointSettings), so no PATCH leaves a writer that cannot
    deliver. Pausing stops its calls in flight on this instance at once (every instance
    within a second)."""
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if value is None:
            raise ApiError(422, "invalid_request", f"{name}: give a value or leave it out")
        changes[name] = value.model_dump() if hasattr(value, "model_dump") else value
    if "url" in changes:
        check_url(container, changes["url"])
    async with transaction(container.db) as pg:
        current = await webhook_store.endpoint(pg, endpoint_id)
        if current is None:
            raise not_found()
        merged = {
            name: value
            for name, value in webhook_store.endpoint_doc(current).items()
            if name in EndpointSettings.model_fields
        }
        try:
            settings = EndpointSettings.model_validate({**merged, **changes})
        except ValidationError as exc:
            if set(changes) == {"paused"}:
                # Pausing is always allowed, even an endpoint stored before today's checks.
                settings = EndpointSettings.model_construct(**{**merged, **changes})
            else:
                raise _invalid(exc) from None
        stored = settings.model_dump(include=set(changes))
        row = await webhook_store.update_endpoint(pg, endpoint_id, stored)
        await record_audit(
            pg, actor=by, action="endpoint.update", target=endpoint_id, detail=stored
        )
    assert row is not None
    if row["paused"]:
        container.webhooks.halt(endpoint_id)
    else:
        container.webhooks.notify()
    return schema.Endpoint.model_validate(webhook_store.endpoint_doc(row))


async def delete_endpoint(container: Container, endpoint_id: str, by: str) -> None:
    async with transaction(container.db) as pg:
        if not await webhook_store.delete_endpoint(pg, endpoint_id):
            raise not_found()
        await record_audit(pg, actor=by, action="endpoint.delete", target=endpoint_id, detail=None)
    container.webhooks.halt(endpoint_id)


async def delivery_log(
    container: Container,
    endpoint_id: str,
    *,
    state: str | None,
    subject: str | None,
    cursor: str | None,
    limit: int,
) -> schema.DeliveryList:
    """An endpoint's deliveries, newest first (the cursor is the last id seen)."""
    if cursor is not None and not cursor.isdigit():
        raise ApiError(400, "invalid_cursor", "the cursor is not one this list gave")
    before = int(cursor) if cursor else None
    async with connection(container.db) as pg:
        if await webhook_store.endpoint(pg, endpoint_id) is None:
            raise not_found()
        rows = await webhook_store.delivery_log(
            pg, endpoint_id, state=state, subject=subject, before_id=before, limit=limit
        )
    items = [dict(r) for r in rows]
    next_cursor = str(items[-1]["id"]) if len(items) == limit else None
    return schema.DeliveryList.model_validate({"items": items, "next_cursor": next_cursor})


async def redeliver(
    container: Container,
    endpoint_id: str,
    *,
    delivery_id: int | None,
    failed_since: datetime | None,
    by: str,
) -> schema.Redelivered:
    async with transaction(container.db) as pg:
        if await webhook_store.endpoint(pg, endpoint_id) is None:
            raise not_found()
        if delivery_id is not None and not await webhook_store.has_delivery(
            pg, endpoint_id, delivery_id
        ):
            raise ApiError(404, "delivery_not_found", "the endpoint has no such delivery")
        queued = await webhook_store.redeliver(
            pg, endpoint_id, delivery_id=delivery_id, failed_since=failed_since
        )
        await record_audit(
            pg,
            actor=by,
            action="endpoint.redeliver",
            target=endpoint_id,
            detail={
                "delivery_id": delivery_id,
                "failed_since": failed_since.isoformat() if failed_since else None,
                "queued": queued,
            },
        )
    container.webhooks.notify()
    return schema.Redelivered(queued=queued)
