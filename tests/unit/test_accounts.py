"""Accounts and buying committees: roles, roll-up, coverage, stages and their records."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.rule_set import AccountThresholds, RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_document, starter_ruleset
from scoring_service.rules import compile_ruleset
from scoring_service.state import Account, LeadState
from stage_router.accounts import (
    account_feedback_move,
    automatic_account_move,
    follow_lead,
)
from stage_router.lifecycle import IllegalFeedback
from stage_router.records import apportion
from tests.helpers.committee import ACCOUNT, committee_journey
from tests.helpers.factories import NOW, at, group, identify, page, parsed, track

DAY = 86400.0


def engine_with(accounts: dict, **extra: object) -> Engine:
    """A small rule set whose numbers are easy to follow: pricing 10, webinar 20."""
    document = RuleSetDocument.model_validate(
        {
            "name": "accounts",
            "thresholds": {"mql": 1000, "sal": 2000},
            "decay": {"half_life_days": 10},
            "rules": [
                {
                    "id": "pricing",
                    "category": "engagement",
                    "points": 10,
                    "when": {"type": "page", "path": "/pricing*"},
                },
                {
                    "id": "webinar",
                    "category": "engagement",
                    "points": 20,
                    "when": {"type": "track", "event": "Webinar Attended"},
                },
            ],
            "accounts": accounts,
            **extra,
        }
    )
    return Engine(compile_ruleset(document, 3))


ROLES = [
    {"id": "economic_buyer", "points": 20, "when": {"trait": "title", "words_any": ["ceo"]}},
    {"id": "champion", "points": 10, "when": {"trait": "title", "words_any": ["head of"]}},
    {"id": "influencer", "points": 5, "when": {"trait": "title", "words_any": ["manager", "head"]}},
]
SMALL = {
    "roles": ROLES,
    "fit": [{"id": "big", "points": 25, "when": {"trait": "employees", "gte": 100}}],
    "rollup": {"top_members": 2, "member_cap": 30, "members": "with_role"},
    "coverage": {"window_days": 7, "min_engagement": 10, "required": ["economic_buyer"]},
    "thresholds": {"engaged": 10, "mqa": 80},
}


def member(engine: Engine, user: str, title: str, *events: dict) -> list[dict]:
    return [
        identify({"title": title}, user=user, when=at(0)),
        group("acme", {"employees": 500}, user=user, when=at(0, seconds=1)),
        *events,
    ]


def replay(engine: Engine, docs: list[dict]) -> Replay:
    r = Replay(engine)
    r.feed([parsed(d) for d in docs], now=NOW)
    return r


# -- roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "role"),
    [
        ("CEO", "economic_buyer"),
        ("Owner", "economic_buyer"),
        ("CFO", "economic_buyer"),
        ("Product Owner", "influencer"),
        ("CTO", "technical_decision_maker"),
        ("Director of IT", "technical_decision_maker"),
        ("COO", "business_participant"),
        ("Head of Operations", "champion"),
        ("International Sales Director", "champion"),
        ("Procurement Director", "validator"),
        ("Legal Counsel", "validator"),
        ("Operations Manager", "influencer"),
        ("Engineer", "influencer"),
        ("Student Intern", None),
        ("Marketing Intern", None),
        ("Doctor", None),
    ],
)
def test_the_starter_roles_read_titles_as_sales_would(title, role):
    scorer = Engine(starter_ruleset()).accounts
    assert scorer is not None
    assert scorer.role_of({"title": title}, None) == role


def test_the_first_matching_role_wins_and_the_crm_overrides_it():
    scorer = engine_with(SMALL).accounts
    assert scorer is not None
    # "Head of" is both a champion and an influencer: the first listed wins.
    assert scorer.role_of({"title": "Head of Sales"}, None) == "champion"
    assert scorer.role_of({"title": "Head of Sales", "committee_role": "Economic Buyer"}, None) == (
        "economic_buyer"
    )
    assert scorer.role_of({"title": "CEO", "committee_role": "none"}, None) is None
    # A role the rule set does not know is ignored: the conditions decide.
    assert scorer.role_of({"title": "CEO", "committee_role": "wizard"}, None) == "economic_buyer"


def test_a_title_change_changes_the_role_on_the_account():
    engine = engine_with(SMALL)
    r = replay(
        engine,
        [
            *member(engine, "u1", "Analyst", page("/pricing", user="u1", when=at(1))),
            identify({"title": "CEO"}, user="u1", when=at(2)),
        ],
    )
    assert r.ws.leads["u1"].committee_role == "economic_buyer"
    assert r.ws.accounts["acme"].members["u1"][2] == "economic_buyer"


# -- roll-up and coverage ---------------------------------------------------------------------


def test_the_rollup_sums_the_top_members_each_capped_and_skips_members_without_a_role():
    engine = engine_with(SMALL)
    docs = (
        member(
            engine,
            "ceo",
            "CEO",
            *[track("Webinar Attended", user="ceo", when=at(1)) for _ in range(3)],
        )
        + member(engine, "head", "Head of Ops", page("/pricing", user="head", when=at(1)))
        + member(
            engine,
            "mgr",
            "Manager",
            page("/pricing", user="mgr", when=at(1)),
            page("/pricing", user="mgr", when=at(1)),
        )
        + member(
            engine,
            "kid",
            "Student",
            *[track("Webinar Attended", user="kid", when=at(1)) for _ in range(5)],
        )
    )
    account = replay(engine, docs).ws.accounts["acme"]
    # ceo 60 capped at 30, mgr 20, head 10: the top two are 30 + 20; the student's 100
    # counts for nothing.
    assert account.engagement == pytest.approx(50)
    assert account.fit == 25
    # Covered: economic buyer (60 >= 10), champion (10 >= 10), influencer (20).
    assert account.covered == ["economic_buyer", "champion", "influencer"]
    assert account.coverage == 35
    assert account.total == pytest.approx(110)


def test_coverage_needs_recent_activity_and_decays_with_engagement():
    engine = engine_with(SMALL)
    docs = member(engine, "ceo", "CEO", track("Webinar Attended", user="ceo", when=at(1)))
    # Eight days later someone else is active: the CEO's last activity is outside the 7 days.
    docs += member(engine, "head", "Head of Ops", page("/pricing", user="head", when=at(9)))
    account = replay(engine, docs).ws.accounts["acme"]
    assert "economic_buyer" not in account.covered and "champion" in account.covered
    # The CEO's 20 points are worth half after 10 days (one half-life): 8 days -> 2^-0.8.
    assert account.engagement == pytest.approx(20 * 0.5**0.8 + 10)


def test_joining_another_account_moves_the_members_engagement():
    engine = engine_with(SMALL)
    docs = member(engine, "ceo", "CEO", track("Webinar Attended", user="ceo", when=at(1)))
    docs.append(group("globex", {"employees": 5}, user="ceo", when=at(2)))
    ws = replay(engine, docs).ws
    assert "ceo" not in ws.accounts["acme"].members
    assert ws.accounts["acme"].engagement == 0 and ws.accounts["acme"].covered == []
    assert ws.accounts["globex"].members["ceo"][0] == pytest.approx(20 * 0.5**0.1)
    assert ws.accounts["globex"].covered == ["economic_buyer"]


def test_anonymous_activity_counts_for_the_account_once_the_visitor_identifies():
    engine = engine_with(SMALL)
    docs = [
        track("Webinar Attended", anon="a1", when=at(0)),
        group("acme", {"employees": 500}, user="u1", when=at(1)),
        identify({"title": "CEO"}, user="u1", anon="a1", when=at(1, hours=1)),
    ]
    account = replay(engine, docs).ws.accounts["acme"]
    assert set(account.members) == {"u1"}
    assert account.members["u1"][0] == pytest.approx(20 * 0.5 ** ((1 + 1 / 24) / 10))
    assert account.covered == ["economic_buyer"]


def _shuffled_keeping_nothing(docs: list[dict], seed: int) -> list[dict]:
    shuffled = list(docs)
    random.Random(seed).shuffle(shuffled)
    return shuffled


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 10_000),
    plan=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3", "u4"]),
            st.sampled_from(["pricing", "webinar", "group", "title"]),
            st.floats(0, 30),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_the_account_score_does_not_depend_on_the_order_member_events_arrive_in(seed, plan):
    engine_docs = []
    titles = {"u1": "CEO", "u2": "Head of Ops", "u3": "Manager", "u4": "Student"}
    for user, what, day in plan:
        when = at(day)
        if what == "pricing":
            engine_docs.append(page("/pricing", user=user, when=when))
        elif what == "webinar":
            engine_docs.append(track("Webinar Attended", user=user, when=when))
        elif what == "group":
            engine_docs.append(group("acme", {"employees": 500}, user=user, when=when))
        else:
            engine_docs.append(identify({"title": titles[user]}, user=user, when=when))
    ordered = replay(engine_with(SMALL), engine_docs).ws.accounts.get("acme")
    shuffled = replay(engine_with(SMALL), _shuffled_keeping_nothing(engine_docs, seed))
    other = shuffled.ws.accounts.get("acme")
    if ordered is None:
        assert other is None
        return
    assert other is not None
    assert other.total == pytest.approx(ordered.total, abs=1e-9)
    assert (other.fit, other.coverage, other.covered) == (
        ordered.fit,
        ordered.coverage,
        ordered.covered,
    )
    assert other.engagement == pytest.approx(ordered.engagement, abs=1e-9)
    assert set(other.members) == set(ordered.members)


# -- the account's stages -------------------------------------------------------------------


def _move(stage: str, engagement: float, total: float, covered: bool) -> tuple[str, str] | None:
    move = automatic_account_move(
        stage=stage,
        engagement=engagement,
        total=total,
        engaged_threshold=10,
        mqa_threshold=80,
        required_covered=covered,
    )
    return (move.to_stage, move.reason) if move is not None else None


@pytest.mark.parametrize(
    ("stage", "engagement", "total", "covered", "expected"),
    [
        ("target", 5, 40, True, None),
        ("target", 12, 40, True, ("engaged", "engaged")),
        # Over the mqa threshold but a required role is missing: engaged only.
        ("target", 50, 90, False, ("engaged", "engaged")),
        # Both hold: straight to mqa in one move.
        ("target", 50, 90, True, ("mqa", "qualified")),
        ("engaged", 50, 90, True, ("mqa", "qualified")),
        ("engaged", 50, 90, False, None),
        # Never down, and never past mqa by score alone.
        ("mqa", 0, 0, False, None),
        ("opportunity", 0, 1000, True, None),
        ("customer", 0, 1000, True, None),
        ("disqualified", 100, 1000, True, None),
    ],
)
def test_scoring_moves_an_account_up_to_mqa_and_never_down(
    stage, engagement, total, covered, expected
):
    assert _move(stage, engagement, total, covered) == expected


def test_account_feedback_follows_the_table_and_leads_carry_their_account():
    assert account_feedback_move("mqa", "opportunity").to_stage == "opportunity"
    assert account_feedback_move("opportunity", "won").to_stage == "customer"
    assert account_feedback_move("opportunity", "lost").to_stage == "target"
    assert account_feedback_move("disqualified", "reopened").to_stage == "target"
    with pytest.raises(IllegalFeedback, match="legal from opportunity"):
        account_feedback_move("mqa", "lost")
    with pytest.raises(IllegalFeedback, match="unknown account outcome"):
        account_feedback_move("mqa", "maybe")
    assert follow_lead("mqa", "opportunity").to_stage == "opportunity"  # type: ignore[union-attr]
    assert follow_lead("opportunity", "opportunity") is None
    assert follow_lead("customer", "opportunity") is None
    assert follow_lead("engaged", "sql") is None


def test_a_lead_won_by_sales_makes_its_account_a_customer():
    engine = engine_with(SMALL)
    r = replay(engine, member(engine, "ceo", "CEO", page("/pricing", user="ceo", when=at(1))))
    lead, account = r.ws.leads["ceo"], r.ws.accounts["acme"]
    lead.stage = "opportunity"
    effects = engine.apply_feedback(
        lead, outcome="won", reason=None, feedback_id="f1", at=NOW - DAY, account=account, now=NOW
    )
    assert [(t["from_stage"], t["to_stage"], t["reason"]) for t in effects.account_transitions] == [
        ("engaged", "customer", "sales_feedback")
    ]
    assert account.stage == "customer"


# -- the records ----------------------------------------------------------------------------


def test_the_committee_journey_qualifies_the_account_once_with_its_explanation():
    r = replay(Engine(starter_ruleset()), committee_journey())
    moves = [(t["from_stage"], t["to_stage"], t["caused_by"]) for t in r.account_transitions]
    assert moves == [("target", "engaged", "committee-08"), ("engaged", "mqa", "committee-15")]
    qualified = r.account_transitions[1]
    assert qualified["roles_covered"] == ["economic_buyer", "technical_decision_maker", "champion"]
    assert "economic_buyer" not in qualified["roles_missing"]
    assert {m["lead_id"] for m in qualified["top_members"]} == {"u-chris", "u-eve", "u-tina"}
    # The members' shares add up to the account's engagement; the parts to the total.
    score = qualified["score"]
    assert round(sum(m["contribution"] for m in qualified["top_members"]), 2) == score["engagement"]
    assert round(score["fit"] + score["engagement"] + score["coverage"], 2) == score["total"]
    assert score["total"] >= 100
    [notice] = r.account_notifications
    assert notice["owner"] == "ae.jordan@seller.example"
    assert notice["score"] == score and notice["top_members"] == qualified["top_members"]
    # The student is a member, but neither counted nor covering a role.
    account = r.ws.accounts[ACCOUNT]
    assert account.members["u-sam"][2] is None
    assert all(m["lead_id"] != "u-sam" for t in r.account_transitions for m in t["top_members"])
    # Lead records carry the person's role and the account's score at that moment.
    eve = [t for t in r.transitions if t["lead_id"] == "u-eve"]
    assert eve and eve[0]["committee_role"] == "economic_buyer"
    assert eve[0]["account_score"] == score["total"]


def test_without_an_owner_trait_the_notification_goes_to_the_routed_queue():
    engine = engine_with(
        SMALL | {"thresholds": {"engaged": 1, "mqa": 1}},
        routing={
            "queues": {"enterprise": {"owners": ["ent@seller.example"]}},
            "rules": [{"queue": "enterprise", "when": {"trait": "account.employees", "gte": 100}}],
        },
    )
    r = replay(engine, member(engine, "ceo", "CEO", page("/pricing", user="ceo", when=at(1))))
    [notice] = r.account_notifications
    assert notice["owner"] == "queue:enterprise"


def test_member_shares_add_up_for_any_values():
    values = [random.Random(i).uniform(0, 40) for i in range(7)]
    shares = apportion(values, sum(values))
    assert round(sum(shares), 2) == round(sum(values), 2)


def test_an_account_keeps_a_bounded_number_of_members():
    from scoring_service import accounts as accounts_module

    engine = engine_with(SMALL)
    scorer = engine.accounts
    assert scorer is not None
    account = Account("huge")
    for n in range(accounts_module.MAX_MEMBERS + 50):
        state = LeadState(lead_id=f"u{n}", engagement=float(n), as_of=NOW)
        scorer.sync(account, state)
    assert len(account.members) == accounts_module.MAX_MEMBERS
    # The least engaged went first.
    assert "u0" not in account.members and f"u{accounts_module.MAX_MEMBERS + 49}" in account.members


def test_rescoring_under_a_version_that_qualifies_the_account_moves_it_with_reason_rescore():
    strict = starter_document().model_copy(deep=True)
    assert strict.accounts is not None
    strict = strict.model_copy(
        update={
            "accounts": strict.accounts.model_copy(
                update={"thresholds": AccountThresholds(engaged=10, mqa=1000)}
            )
        }
    )
    r = replay(Engine(compile_ruleset(strict, 1)), committee_journey())
    account = r.ws.accounts[ACCOUNT]
    assert account.stage == "engaged"
    history: dict[str, list] = {}
    for doc in committee_journey():
        event = parsed(doc)
        history.setdefault(r.ws.canonical(event.user_id or event.anonymous_id or ""), []).append(
            event
        )
    starter = Engine(starter_ruleset())
    moves = []
    for lead_id, state in sorted(r.ws.leads.items()):
        effects = starter.rescore(state, history[lead_id], account, now=NOW)
        moves += [
            (t["from_stage"], t["to_stage"], t["reason"]) for t in effects.account_transitions
        ]
    assert moves == [("engaged", "mqa", "rescore")]
    assert account.ruleset_version == starter.rules.version and account.stage == "mqa"


def test_hostile_traits_neither_raise_nor_leak_into_records():
    engine = engine_with(SMALL | {"thresholds": {"engaged": 1, "mqa": 1}})
    docs = [
        identify(
            {"title": ["CEO"], "committee_role": {"role": "economic_buyer"}}, user="u1", when=at(0)
        ),
        group(
            "acme",
            {"owner": "x" * 10_000, "name": 42, "employees": "many"},
            user="u1",
            when=at(0, seconds=1),
        ),
        identify({"title": "CEO", "committee_role": "  Economic-Buyer "}, user="u1", when=at(1)),
        page("/pricing", user="u1", when=at(1, seconds=1)),
    ]
    r = replay(engine, docs)
    assert r.ws.leads["u1"].committee_role == "economic_buyer"
    [notice] = r.account_notifications
    assert len(notice["owner"]) == 200
    assert notice["profile"]["name"] is None  # a number is not a name
    assert r.ws.accounts["acme"].fit == 0  # "many" employees is no size
