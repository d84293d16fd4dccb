"""The stage state machine."""

from __future__ import annotations

import pytest

from stage_router.lifecycle import (
    FEEDBACK_MOVES,
    IllegalFeedback,
    automatic_move,
    feedback_move,
    threshold_stage,
)

STAGES = ["lead", "mql", "sal", "sql", "opportunity", "customer", "recycled", "disqualified"]


def decide(stage="lead", total=0.0, met=True, trigger=None, disqualify=None):
    return automatic_move(
        stage=stage,
        reached=threshold_stage(total, 50, 90, None),
        allowed_rank=3 if met else 0,
        trigger=trigger,
        disqualify_rule=disqualify,
    )


def test_threshold_moves_one_jump_at_most():
    move = decide(total=95)
    assert (move.to_stage, move.reason) == ("sal", "threshold")
    assert decide(stage="mql", total=60) is None


def test_trigger_wins_over_threshold():
    move = decide(total=95, trigger=("sal", "demo-request"))
    assert (move.to_stage, move.reason, move.rule_id) == ("sal", "trigger", "demo-request")


def test_requirements_gate_every_promotion_but_not_disqualification():
    assert decide(total=200, met=False, trigger=("sql", "x")) is None
    assert decide(met=False, disqualify="competitor").to_stage == "disqualified"


def test_nothing_moves_backwards_or_out_of_disqualified():
    assert decide(stage="sql", total=95) is None
    assert decide(stage="disqualified", total=500, trigger=("sal", "x")) is None


def test_recycled_lead_reenters_mql_at_the_threshold():
    assert decide(stage="recycled", total=55).to_stage == "mql"


@pytest.mark.parametrize("outcome", sorted(FEEDBACK_MOVES))
@pytest.mark.parametrize("stage", STAGES)
def test_feedback_table(stage, outcome):
    legal_from, to_stage = FEEDBACK_MOVES[outcome]
    if stage in legal_from:
        assert feedback_move(stage, outcome, "no budget").to_stage == to_stage
    else:
        with pytest.raises(IllegalFeedback):
            feedback_move(stage, outcome, "no budget")


def test_rejection_needs_a_reason():
    with pytest.raises(IllegalFeedback, match="reason"):
        feedback_move("mql", "rejected")
    assert feedback_move("mql", "rejected", "no budget").to_stage == "recycled"


def test_customer_cannot_be_disqualified_by_sales():
    with pytest.raises(IllegalFeedback):
        feedback_move("customer", "disqualified")


def test_the_contracts_spell_the_stages_the_lifecycle_knows_in_its_order() -> None:
    from typing import get_args

    from schemas.records import AccountStage
    from schemas.rule_set import Stage
    from stage_router.accounts import ACCOUNT_STAGES
    from stage_router.lifecycle import STAGES

    assert get_args(Stage) == STAGES
    assert get_args(AccountStage) == ACCOUNT_STAGES
