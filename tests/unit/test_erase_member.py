"""The pure core's part of an erasure: an account without an erased member is scored and
placed in the buyer journey as if the member had never been one."""

from __future__ import annotations

import time

from scoring_service.engine import Engine
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.simulation import replay_documents
from tests.helpers.committee import ACCOUNT, committee_journey


def test_an_account_without_an_erased_member_is_as_if_they_had_never_joined() -> None:
    now = time.time()
    journey = committee_journey()
    everyone = replay_documents(Engine(starter_ruleset()), journey, now=now)
    without_tina = replay_documents(
        Engine(starter_ruleset()), [d for d in journey if d.get("userId") != "u-tina"], now=now
    )
    account = everyone.ws.accounts[ACCOUNT]
    expected = without_tina.ws.accounts[ACCOUNT]
    assert "u-tina" in account.members and account.coverage > expected.coverage

    effects = everyone.engine.erase_member(account, "u-tina", at=now, caused_by="erasure:r-1")

    assert account.members == expected.members
    assert account.members_by == expected.members_by
    assert abs(account.engagement - expected.engagement) < 1e-9
    assert (account.coverage, account.covered) == (expected.coverage, expected.covered)
    assert account.journey is not None and expected.journey is not None
    assert account.journey.phase == expected.journey.phase
    assert all(m["caused_by"] == "erasure:r-1" for m in effects.journey_moves)
    assert not effects.transitions and not effects.account_transitions
