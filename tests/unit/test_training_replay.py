"""Training reads each decided lead as the engine did at its handoff: its history and its
account's other members' replayed together, in pieces that never split an account."""

from __future__ import annotations

import time

import orjson
import pytest

from bench.workload import generate
from scoring_service.engine import Engine
from scoring_service.intake import Event, parse_event
from scoring_service.model_score import features_of
from scoring_service.pipeline import Workspace, score_event
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.training import replay_chunks, samples_at_handoffs

HANDED_OFF = ("mql", "sal", "sql")


def test_each_decided_lead_is_read_as_it_stood_at_its_handoff_with_its_account() -> None:
    now = time.time()
    events = sorted(
        (
            e
            for d in generate(events=6000, leads=300, seed=12, accounts=12)
            if isinstance(e := parse_event(orjson.dumps(d), now=now), Event)
        ),
        key=lambda e: e.ts,
    )
    # Live: every event in order; each lead read at its first handoff.
    engine = Engine(starter_ruleset(), account_features=True)
    ws = Workspace()
    history: dict[str, list[Event]] = {}
    seen: dict[str, tuple[float, dict[str, float]]] = {}
    for event in events:
        scored = score_event(ws, engine, event, now=now)
        history.setdefault(scored.lead_id, []).append(event)
        for move in scored.effects.transitions:
            lead = move["lead_id"]
            if move["to_stage"] in HANDED_OFF and lead not in seen:
                seen[lead] = (event.ts, features_of(ws.leads[lead], engine.rules))
    assert len(seen) > 20
    assert any("account:score" in features for _, features in seen.values())
    handoffs = [(lead, at, True) for lead, (at, _) in seen.items()]
    account_of = {lead: state.account_id for lead, state in ws.leads.items()}
    members_of = {a: list(account.members) for a, account in ws.accounts.items()}

    pieces = replay_chunks(handoffs, account_of, members_of, limit=60)
    assert len(pieces) > 1
    for lead_ids, _ in pieces:
        for account in {account_of[lead] for lead in lead_ids if account_of.get(lead)}:
            # An account's members come whole, in one piece.
            assert set(members_of[account]) <= set(lead_ids)
    samples = [
        sample
        for lead_ids, theirs in pieces
        for sample in samples_at_handoffs(
            Engine(starter_ruleset(), account_features=True),
            [e for lead in lead_ids for e in history.get(lead, [])],
            theirs,
        )
    ]
    assert sorted(s.lead_id for s in samples) == sorted(seen)
    for sample in samples:
        at, features = seen[sample.lead_id]
        assert sample.at == at
        assert sample.features == pytest.approx(features, abs=1e-9), sample.lead_id
