"""Comparing what the service stored and published with a pure replay of the same events."""

from __future__ import annotations

import time
from typing import Any

import orjson

from services.settings import Settings
from tests.helpers.database import db_fetch
from tests.helpers.kafka import read_all


def replay(docs: list[Any]) -> Any:
    """The same events through the pure pipeline, in memory: what the service must match."""
    from scoring_service.engine import Engine
    from scoring_service.rule_set_files import starter_ruleset
    from scoring_service.simulation import replay_documents

    return replay_documents(Engine(starter_ruleset()), docs, now=time.time())


async def assert_leads_match(settings: Settings, expected: Any) -> None:
    """Every lead's stage, transitions counted and scores, every score of several, as the
    replay has them."""
    rows = await db_fetch(
        settings,
        "SELECT lead_id, stage, fit, engagement, seq, (scoring->'totals')::text AS totals, "
        "(scoring->'journey')::text AS journey, journey_phase FROM leads",
    )
    actual = {r["lead_id"]: r for r in rows}
    assert set(actual) == set(expected.ws.leads)
    several = expected.engine.rules.book.several
    for lead_id, state in expected.ws.leads.items():
        row = actual[lead_id]
        assert (row["stage"], row["seq"]) == (state.stage, state.seq), lead_id
        # The buyer journey: the phase (its column too), touches and content seen.
        journey = state.journey.to_doc() if state.journey is not None else None
        assert (orjson.loads(row["journey"]) if row["journey"] else None) == journey, lead_id
        assert row["journey_phase"] == (journey or {}).get("phase"), lead_id
        assert abs(row["fit"] - state.fit) < 1e-9, lead_id
        assert abs(row["engagement"] - state.engagement) < 1e-6, lead_id
        if several:
            # Kept to the cent as each batch wrote the lead: a cent's rounding at most apart.
            stored = orjson.loads(row["totals"])
            for name, total in expected.engine.totals(state).items():
                assert abs(stored[name] - total) < 0.01 + 1e-6, (lead_id, name)


# A lead record's `account_score` depends on how far the account's other members, on other
# partitions, had got at that moment: not fixed by the input, so not compared with a replay
# (the account roll-up itself is, by assert_accounts_match).
NOT_FIXED_BY_INPUT = ("emitted_at", "account_score")


async def assert_transitions_as_replayed(settings: Settings, expected: Any) -> None:
    """Every expected lead transition is on the topic under its lead's key, as the replay
    has it; copies are identical; and the account roll-ups equal the replay's."""
    transitions = expected.transitions
    records = await read_all(settings, settings.topic_transitions, expect=len(transitions))
    copies: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        value = orjson.loads(record.value)
        assert record.key == value["lead_id"].encode()
        copies.setdefault(value["transition_id"], []).append(value)
    assert set(copies) == {t["transition_id"] for t in transitions}
    for versions in copies.values():  # a duplicate is the same record under the same id
        assert all(v == versions[0] for v in versions)
    for t in transitions:
        published = copies[t["transition_id"]][0]
        assert {k: v for k, v in published.items() if k not in NOT_FIXED_BY_INPUT} == {
            k: v for k, v in t.items() if k not in NOT_FIXED_BY_INPUT
        }
    await assert_accounts_match(settings, expected)
    await assert_journey_as_replayed(settings, expected)


async def assert_journey_as_replayed(settings: Settings, expected: Any) -> None:
    """Every lead's buyer-journey moves are stored once, as the replay made them. (An
    account's moves depend on the order its members' events arrive across partitions; its
    phase does not, and assert_accounts_match compares that.)"""
    rows = await db_fetch(
        settings,
        "SELECT subject_id, seq, from_phase, to_phase, reason, rule_id, caused_by, content, "
        "channel, seen::text AS seen, extract(epoch FROM occurred_at)::float8 AS occurred_at, "
        "ruleset_version FROM journey_moves WHERE subject = 'lead' ORDER BY subject_id, seq",
    )
    stored = [{**dict(r), "seen": orjson.loads(r["seen"]), "subject": "lead"} for r in rows]
    moves = sorted(
        (m for m in expected.journey_moves if m["subject"] == "lead"),
        key=lambda m: (m["subject_id"], m["seq"]),
    )
    assert len(stored) == len(moves)
    for row, move in zip(stored, moves, strict=True):
        assert abs(row.pop("occurred_at") - move["occurred_at"]) < 1e-5, move
        assert row == {k: v for k, v in move.items() if k != "occurred_at"}


async def assert_accounts_match(settings: Settings, expected: Any) -> None:
    """Every account's roll-up equals the replay's: its members' engagement, clocks and
    roles, and the parts of its score (these do not depend on the order events arrive in)."""
    rows = await db_fetch(
        settings,
        "SELECT account_id, fit, engagement, coverage, roles_covered, scoring::text AS s, "
        "journey_phase FROM accounts",
    )
    actual = {r["account_id"]: r for r in rows}
    assert set(actual) == set(expected.ws.accounts)
    for account_id, account in expected.ws.accounts.items():
        row = actual[account_id]
        members = {k: tuple(v) for k, v in orjson.loads(row["s"]).get("members", {}).items()}
        assert set(members) == set(account.members), account_id
        for lead_id, (engagement, as_of, role) in account.members.items():
            stored = members[lead_id]
            assert abs(stored[0] - engagement) < 1e-6, (account_id, lead_id)
            assert stored[1:] == (as_of, role), (account_id, lead_id)
        # Several scores: each member's named engagement as the replay has it.
        stored_by = orjson.loads(row["s"]).get("members_by", {})
        for lead_id, named in account.members_by.items():
            for name, engagement in named.items():
                assert abs(stored_by[lead_id].get(name, 0.0) - engagement) < 1e-6, (
                    account_id,
                    lead_id,
                    name,
                )
        assert abs(row["engagement"] - account.engagement) < 1e-6, account_id
        phase = account.journey.phase if account.journey is not None else None
        assert row["journey_phase"] == phase, account_id
        assert (row["fit"], row["coverage"], list(row["roles_covered"])) == (
            account.fit,
            account.coverage,
            account.covered,
        ), account_id
