"""A person's data on request: everything the service holds on them, found by one of their
ids or their e-mail address, as one document (right of access)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import orjson

from schemas import api
from services.adapters.postgres import person_store, read_store, rule_set_store
from services.adapters.postgres.db import connection, transaction
from services.app import leads
from services.app.container import Container
from services.app.errors import ApiError

IdKind = Literal["lead_id", "user_id", "anonymous_id", "email"]
# Characters a search would read as "anything": a request made of them names nobody.
WILDCARDS = frozenset("*%_?")


def _identifier(given: dict[IdKind, str | None]) -> tuple[IdKind, str]:
    named = [(kind, value) for kind, value in given.items() if value is not None]
    if len(named) != 1:
        raise ApiError(
            422,
            "one_identifier",
            "name the person by exactly one of lead_id, user_id, anonymous_id or email",
        )
    kind, value = named[0]
    assert value is not None
    value = value.strip()
    if not value or set(value) <= WILDCARDS:
        raise ApiError(422, "invalid_identifier", f"{kind} must name one person, not a pattern")
    if kind == "email" and "@" not in value:
        raise ApiError(422, "invalid_identifier", "email must be an e-mail address")
    return kind, value


async def export_person(
    container: Container,
    *,
    by: str,
    lead_id: str | None = None,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    email: str | None = None,
) -> api.PersonExport:
    """Every lead the person is known as, each with what the API shows of it and every row
    held under it; audited without the person's data (the kind of id, how many leads)."""
    kind, value = _identifier(
        {"lead_id": lead_id, "user_id": user_id, "anonymous_id": anonymous_id, "email": email}
    )
    async with connection(container.db) as pg:
        if kind == "email":
            found = await person_store.leads_by_email(pg, value)
        else:
            canonical = await read_store.canonical_lead_id(pg, value)
            known = await person_store.lead_row(pg, canonical) is not None
            found = [canonical] if known else []
    if not found:
        raise ApiError(404, "person_not_found", f"no lead is known by that {kind}")
    exported = [await _lead(container, lead_id) for lead_id in found]
    async with transaction(container.db) as pg:
        await rule_set_store.record_audit(
            pg,
            actor=by,
            action="person.export",
            target=None,
            detail={"found_by": kind, "leads": len(exported)},
        )
    return api.PersonExport(
        found_by=kind,
        exported_at=datetime.now(UTC),
        leads=[lead for lead, _ in exported],
        truncated=any(cut for _, cut in exported),
    )


async def _lead(container: Container, lead_id: str) -> tuple[api.ExportedLead, bool]:
    now = await leads.lead_detail(container, lead_id)
    history = await leads.lead_history(container, lead_id, person_store.MAX_ROWS)
    async with connection(container.db) as pg:
        row = await person_store.lead_row(pg, lead_id)
        merged = await person_store.merged_ids(pg, lead_id)
        events = await person_store.events(pg, lead_id)
        handoffs = await person_store.handoffs(pg, lead_id)
        feedback = await person_store.feedback(pg, lead_id)
    if row is None:
        raise ApiError(404, "person_not_found", "the lead was merged or erased meanwhile")
    lead = api.ExportedLead(
        lead_id=lead_id,
        traits=orjson.loads(row["traits"]),
        merged_ids=[api.MergedId(id=r["alias_id"], linked_at=r["linked_at"]) for r in merged],
        created_at=row["created_at"],
        now=now,
        history=history,
        events=[
            api.ExportedEvent.model_validate(
                {**dict(r), "event": orjson.loads(r["event"]), "hits": orjson.loads(r["hits"])}
            )
            for r in events
        ],
        handoffs=[api.ExportedHandoff.model_validate(dict(r)) for r in handoffs],
        feedback=[api.ExportedFeedback.model_validate(dict(r)) for r in feedback],
    )
    cut = max(len(events), len(handoffs), len(feedback)) >= person_store.MAX_ROWS
    return lead, cut
