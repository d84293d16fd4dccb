"""A person's data on request: the export of everything held on them (right of access), their
erasure (right to erasure) and suppression, and the requests that record each.

A person is named by one of their ids or their e-mail address. Requests keep what kind of id
that was, never the id: an erasure holds it only until it is carried out
(services/pipeline/erasures.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas import api
from services.adapters.postgres import person_store, read_store, rule_set_store
from services.adapters.postgres.db import Connection, connection, transaction
from services.app import leads
from services.app.container import Container
from services.app.errors import ApiError

IdKind = api.PersonIdKind
# Characters a search would read as "anything": a request made of them names nobody.
WILDCARDS = frozenset("*%_?")
# Requests listed at most.
MAX_LISTED = 500


def identifier(named: api.PersonNamed) -> tuple[IdKind, str]:
    """The one id or address a request names the person by (422 for none, several, or a
    pattern)."""
    given: dict[IdKind, str | None] = {
        "lead_id": named.lead_id,
        "user_id": named.user_id,
        "anonymous_id": named.anonymous_id,
        "email": named.email,
    }
    found = [(kind, value) for kind, value in given.items() if value is not None]
    if len(found) != 1:
        raise ApiError(
            422,
            "one_identifier",
            "name the person by exactly one of lead_id, user_id, anonymous_id or email",
        )
    kind, value = found[0]
    assert value is not None
    value = value.strip()
    if "\x00" in value or not _encodable(value):
        raise ApiError(422, "invalid_identifier", f"{kind} is not text an id can be")
    if not value or set(value) - {"@"} <= WILDCARDS:
        raise ApiError(422, "invalid_identifier", f"{kind} must name one person, not a pattern")
    if kind == "email" and "@" not in value:
        raise ApiError(422, "invalid_identifier", "email must be an e-mail address")
    return kind, value


def _encodable(value: str) -> bool:
    """Whether the text can be stored (a lone surrogate cannot)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


async def _leads_known_by(pg: Connection, kind: IdKind, value: str) -> list[str]:
    if kind == "email":
        return await person_store.leads_by_email(pg, value)
    canonical = await read_store.canonical_lead_id(pg, value)
    return [canonical] if await person_store.lead_row(pg, canonical) is not None else []


def _suppression_key(container: Container, kind: IdKind, value: str) -> bytes:
    if kind == "email":
        return container.suppression.email_key(value)
    return container.suppression.id_key(value)


def _request(row: Any) -> api.PersonRequest:
    return api.PersonRequest.model_validate(
        {
            **dict(row),
            "id": str(row["id"]),
            "removed": orjson.loads(row["removed"]) if row["removed"] else None,
        }
    )


async def _stored_request(container: Container, request_id: uuid.UUID) -> api.PersonRequest:
    async with connection(container.db) as pg:
        row = await person_store.request(pg, request_id)
    if row is None:
        raise ApiError(404, "request_not_found", "no such request")
    return _request(row)


async def export_person(
    container: Container, named: api.PersonNamed, *, by: str
) -> api.PersonExport:
    """Every lead the person is known as, each with what the API shows of it and every row
    held under it. Recorded as a request and audited without the person's data."""
    kind, value = identifier(named)
    async with connection(container.db) as pg:
        found = await _leads_known_by(pg, kind, value)
    if not found:
        raise ApiError(404, "person_not_found", f"no lead is known by that {kind}")
    exported = [await _lead(container, lead_id) for lead_id in found]
    request_id = uuid.uuid4()
    async with transaction(container.db) as pg:
        await person_store.add_request(
            pg,
            request_id=request_id,
            kind="export",
            found_by=kind,
            requested_by=by,
            done=True,
            leads=len(exported),
        )
        await rule_set_store.record_audit(
            pg,
            actor=by,
            action="person.export",
            target=str(request_id),
            detail={"found_by": kind, "leads": len(exported)},
        )
    container.metrics.person_requests.labels("export", "done").inc()
    return api.PersonExport(
        request_id=str(request_id),
        found_by=kind,
        exported_at=datetime.now(UTC),
        leads=[lead for lead, _ in exported],
        truncated=any(cut for _, cut in exported),
    )


async def request_erasure(
    container: Container, body: api.ErasureRequest, *, by: str
) -> tuple[api.PersonRequest, bool]:
    """Queue the erasure of a person (carried out in the background, oldest first); with
    `suppress`, their events are dropped from this moment. Returns the request and whether
    it is new: naming a person already erased and suppressed gives their erasure again.
    404 when nobody is known by the identifier."""
    kind, value = identifier(body)
    key = _suppression_key(container, kind, value)
    request_id = uuid.uuid4()
    async with transaction(container.db) as pg:
        found = await _leads_known_by(pg, kind, value)
        if not found:
            earlier = await person_store.suppressed_by(pg, key)
            if earlier is None:
                raise ApiError(404, "person_not_found", f"no lead is known by that {kind}")
            request_id, new = earlier, False
        else:
            new = True
            await person_store.add_request(
                pg,
                request_id=request_id,
                kind="erase",
                found_by=kind,
                requested_by=by,
                identifier=value,
                suppress=body.suppress,
            )
            if body.suppress:
                await person_store.suppress(pg, [key], request_id)
            await rule_set_store.record_audit(
                pg,
                actor=by,
                action="person.erase",
                target=str(request_id),
                detail={"found_by": kind, "suppress": body.suppress},
            )
    if new:
        container.erasures.notify()
    return await _stored_request(container, request_id), new


async def unsuppress(container: Container, named: api.PersonNamed, *, by: str) -> api.PersonRequest:
    """Let a suppressed person's events in again (the day they sign up anew): every key
    their erasure listed leaves the list. 404 when the identifier is not suppressed."""
    kind, value = identifier(named)
    request_id = uuid.uuid4()
    async with transaction(container.db) as pg:
        removed = await person_store.unsuppress(pg, _suppression_key(container, kind, value))
        if not removed:
            raise ApiError(404, "not_suppressed", f"nobody is suppressed by that {kind}")
        await person_store.add_request(
            pg, request_id=request_id, kind="unsuppress", found_by=kind, requested_by=by, done=True
        )
        await person_store.finish_request(
            pg, request_id, leads=0, removed={"suppressed_keys": removed}
        )
        await rule_set_store.record_audit(
            pg,
            actor=by,
            action="person.unsuppress",
            target=str(request_id),
            detail={"found_by": kind, "keys": removed},
        )
    container.metrics.person_requests.labels("unsuppress", "done").inc()
    return await _stored_request(container, request_id)


async def person_request(container: Container, request_id: str) -> api.PersonRequest:
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        raise ApiError(404, "request_not_found", "no such request") from None
    return await _stored_request(container, parsed)


async def person_requests(
    container: Container, *, limit: int = 100, status: str | None = None
) -> api.PersonRequestList:
    """The newest requests first."""
    async with connection(container.db) as pg:
        rows = await person_store.requests(pg, limit=min(limit, MAX_LISTED), status=status)
    return api.PersonRequestList(requests=[_request(r) for r in rows])


async def _lead(container: Container, lead_id: str) -> tuple[api.ExportedLead, bool]:
    now = await leads.lead_detail(container, lead_id)
    history = await leads.lead_history(container, lead_id, person_store.MAX_ROWS)
    async with connection(container.db) as pg:
        row = await person_store.lead_row(pg, lead_id)
        merged = await person_store.merged_ids(pg, lead_id)
        every_id = [lead_id, *(r["alias_id"] for r in merged)]
        events = await person_store.events(pg, lead_id)  # a merged id's moved with it
        handoffs = await person_store.handoffs(pg, every_id)
        feedback = await person_store.feedback(pg, every_id)
        transitions = await person_store.transitions(pg, every_id[1:])
        moves = await person_store.journey_moves(pg, every_id[1:])
    if row is None:
        raise ApiError(404, "person_not_found", "the lead was merged or erased meanwhile")
    before: dict[str, dict[str, list[Any]]] = {
        alias: {"transitions": [], "journey": [], "handoffs": [], "feedback": []}
        for alias in every_id[1:]
    }
    for r in transitions:
        before[r["lead_id"]]["transitions"].append(orjson.loads(r["record"]))
    for move in moves:
        before[move["subject_id"]]["journey"].append(move)
    for kind, rows in (("handoffs", handoffs), ("feedback", feedback)):
        for r in rows:
            if r["lead_id"] != lead_id:
                before[r["lead_id"]][kind].append(dict(r))

    def own(rows: list[Any]) -> list[Any]:
        return [r for r in rows if r["lead_id"] == lead_id]

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
        handoffs=[api.ExportedHandoff.model_validate(dict(r)) for r in own(handoffs)],
        feedback=[api.ExportedFeedback.model_validate(dict(r)) for r in own(feedback)],
        before_merge=[
            api.ExportedBeforeMerge.model_validate({"id": alias, **kept})
            for alias, kept in before.items()
            if any(kept.values())
        ],
    )
    longest = max(len(events), len(handoffs), len(feedback), len(transitions), len(moves))
    return lead, longest >= person_store.MAX_ROWS
