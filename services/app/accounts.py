"""Accounts: pages, an account's score and buying committee explained, its history, and
sales' word on an account. Shared by the HTTP API and the console."""

from __future__ import annotations

from typing import Any

import orjson

from schemas import api
from schemas.timefmt import iso
from services.adapters.postgres import read_store, rule_set_store
from services.adapters.postgres.db import connection
from services.app.container import Container
from services.app.errors import ApiError
from services.app.journey import journey_position
from services.app.manual import run_manual
from services.app.paging import next_page_cursor, score_cursor, uncursor
from services.pipeline import manual_moves
from services.pipeline.lead_transaction import LeadTransaction
from stage_router.records import AccountTransitionDoc, SignalDoc, account_score_doc

# The engagement rules shown as an account's top signals.
TOP_SIGNALS = 10


def _signals_across(members: list[list[SignalDoc]]) -> list[SignalDoc]:
    """Each engagement rule's contributions summed over the members, largest first."""
    summed: dict[str, SignalDoc] = {}
    for signals in members:
        for signal in signals:
            if signal["category"] != "engagement":
                continue
            seen = summed.get(signal["rule_id"])
            if seen is None:
                summed[signal["rule_id"]] = dict(signal)  # type: ignore[assignment]
                continue
            seen["hits"] += signal["hits"]
            seen["ignored"] += signal["ignored"]
            seen["contribution"] = round(seen["contribution"] + signal["contribution"], 2)
            if (signal["last_seen"] or "") > (seen["last_seen"] or ""):
                seen["last_seen"] = signal["last_seen"]
    ranked = sorted(summed.values(), key=lambda s: (-abs(s["contribution"]), s["rule_id"]))
    return ranked[:TOP_SIGNALS]


async def account_list(
    container: Container,
    *,
    stage: str | None,
    min_score: float | None,
    role_missing: str | None,
    cursor: str | None,
    limit: int,
    sort: str,
    phase: str | None = None,
) -> api.AccountPage:
    """Accounts in id order, or by score, highest first (`sort=-score`), filtered by
    stage, minimum score, buyer-journey phase and a committee role they have not covered
    (`role_missing=economic_buyer`: the accounts to find a budget owner in)."""
    db = container.db
    by_score = sort.startswith("-score")
    score_name = sort.partition(":")[2] or None
    if score_name == "default":
        score_name = None
    after = score_cursor(cursor) if by_score else None
    async with connection(db) as pg:
        rows = await read_store.account_page(
            pg,
            after=after,
            after_id=uncursor(cursor) if not by_score else "",
            by_score=by_score,
            stage=stage,
            min_score=min_score,
            role_missing=role_missing,
            limit=limit,
            score_name=score_name,
            phase=phase or None,
        )
    items = [
        {
            "account_id": r["account_id"],
            "name": r["name"],
            "stage": r["stage"],
            "score": account_score_doc(r["fit"], r["engagement"], r["coverage"]),
            "roles_covered": list(r["roles_covered"]),
            "member_count": r["member_count"],
            "scores": orjson.loads(r["totals"]) if r["totals"] else {},
            "journey_phase": r["journey_phase"],
            "updated_at": r["updated_at"],
        }
        for r in rows
    ]
    next_cursor = next_page_cursor(
        rows,
        limit,
        id_key="account_id",
        score_key="total" if score_name else "score",
        by_score=by_score,
    )
    return api.AccountPage.model_validate({"items": items, "next_cursor": next_cursor})


async def account_detail(container: Container, account_id: str) -> api.AccountPublic:
    """An account's score and its parts, its stage, its members with their roles and
    shares, the committee roles covered and missing, and the top signals across members."""
    db = container.db
    async with connection(db) as pg:
        account = await read_store.account(pg, account_id)
        if account is None:
            raise ApiError(404, "account_not_found", f"no account {account_id!r}")
        version = await rule_set_store.active_version(pg) or account.ruleset_version
        engine = await container.rules.engine_for(pg, version)
        leads = await read_store.leads(pg, list(account.members))
    scorer = engine.accounts
    if scorer is not None:
        score, covered, missing, counted = scorer.explain(account)
        required = list(scorer.spec.required)
    else:
        score = account_score_doc(account.fit, account.engagement, account.coverage)
        covered, missing, counted, required = list(account.covered), [], [], []
    shares = {m["lead_id"]: m["contribution"] for m in counted}
    learned = [name for name, _ in engine.rules.book.learned]

    def learned_of(lead_id: str) -> dict[str, float]:
        totals = leads[lead_id].totals if lead_id in leads else None
        return {n: round(totals[n], 2) for n in learned if totals and n in totals}

    members = sorted(
        (
            {
                "lead_id": lead_id,
                "role": role,
                "stage": leads[lead_id].stage if lead_id in leads else None,
                "engagement": round(engagement, 2),
                "counted": shares.get(lead_id, 0.0),
                "last_activity_at": iso(as_of),
                "learned": learned_of(lead_id),
            }
            for lead_id, (engagement, as_of, role) in account.members.items()
        ),
        key=lambda m: (-m["counted"], -m["engagement"], m["lead_id"]),  # type: ignore[operator]
    )
    name = account.traits.get("name")
    return api.AccountPublic.model_validate(
        {
            "account_id": account.account_id,
            "name": name if isinstance(name, str) else None,
            "stage": account.stage,
            "stage_entered_at": iso(account.stage_entered_at) if account.stage_entered_at else None,
            "scores": scorer.score_docs(account) if scorer is not None else {"default": score},
            "score": score,
            "score_as_of": iso(account.as_of) if account.as_of else None,
            "fit_rules": account.fit_rules,
            "roles_covered": covered,
            "roles_missing": missing,
            "roles_required": required,
            "members": members,
            "top_signals": _signals_across([engine.explain(s)[1] for s in leads.values()]),
            "ruleset_version": account.ruleset_version,
            "journey": journey_position(account.journey),
        },
    )


async def account_history(container: Container, account_id: str) -> api.AccountHistory:
    """The account's stage changes, oldest first, as published."""
    async with connection(container.db) as pg:
        rows = await read_store.account_transitions(pg, account_id)
        moves = await read_store.journey_moves(pg, "account", account_id)
        if not rows and await read_store.account(pg, account_id) is None:
            raise ApiError(404, "account_not_found", f"no account {account_id!r}")
    return api.AccountHistory.model_validate(
        {
            "account_id": account_id,
            "transitions": [orjson.loads(r["record"]) for r in rows],
            "journey": moves,
        },
    )


async def adjust(
    container: Container, account_id: str, body: api.Adjustment, *, by: str
) -> api.AccountAdjustmentResult:
    """An adjustment of an account's engagement (manual_moves.adjust_account)."""

    async def move(tx: LeadTransaction) -> dict[str, Any]:
        return await manual_moves.adjust_account(tx, account_id, by=by, **body.model_dump())

    return api.AccountAdjustmentResult.model_validate(
        await run_manual(container, move, writer="account-feedback")
    )


async def account_feedback(
    container: Container, account_id: str, body: api.AccountFeedbackBody, *, by: str
) -> api.AccountFeedbackResult:
    """Sales' word on an account (idempotent on feedback_id), in a lead transaction."""

    async def move(tx: LeadTransaction) -> tuple[AccountTransitionDoc, bool]:
        return await manual_moves.account_feedback(
            tx,
            account_id,
            feedback_id=body.feedback_id,
            outcome=body.outcome,
            reason=body.reason,
            by=by,
        )

    transition, duplicate = await run_manual(container, move, writer="account-feedback")
    return api.AccountFeedbackResult.model_validate(
        {
            "feedback_id": body.feedback_id,
            "account_id": account_id,
            "duplicate": duplicate,
            "transition": transition,
        },
    )
