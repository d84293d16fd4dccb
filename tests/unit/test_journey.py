"""The buyer journey on the starter rule set: phases entered on evidence, falling back when
quiet, channels, and an account placed by its members (docs/concepts/journey.md)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from bench.workload import generate
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.journey import channel_of, compile_journey
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_document, starter_ruleset
from tests.helpers.committee import ACCOUNT, committee_journey
from tests.helpers.factories import BASE, NOW, at, identify, page, parsed, track

DAY = 86400.0
ICP_OWNER = {
    "email": "dana@haulers.example",
    "title": "Owner",
    "company": {"name": "Haulers Inc", "industry": "Logistics", "employees": 40, "country": "US"},
}
SEARCH_AD = {"campaign": {"source": "google", "medium": "cpc", "name": "fleet-costs"}}


# The journeys here start two months before the factories' base, so that the last step
# (day 50) is in the past and no intake refuses it as from the future.
START = -60


def on(days: float, *, hours: float = 0) -> str:
    return at(START + days, hours=hours)


def day(n: float) -> float:
    return BASE.timestamp() + (START + n) * DAY


def replay(*docs: dict[str, Any]) -> Replay:
    run = Replay(Engine(starter_ruleset()))
    run.feed([parsed(d) for d in docs], now=NOW)
    return run


def moves(run: Replay, subject: str = "lead") -> list[tuple[str | None, str, str]]:
    return [
        (m["from_phase"], m["to_phase"], m["reason"])
        for m in run.journey_moves
        if m["subject"] == subject
    ]


def the_search_ad_visitor() -> list[dict[str, Any]]:
    """The journey of the issue: a search ad, two blog posts, sign-up, a comparison, a
    demo, two months of quiet, the contract."""
    return [
        page("/blog/fleet-trends-2027", anon="a-1", when=on(0), context=SEARCH_AD),
        page("/blog/how-to-cut-fuel-costs", anon="a-1", when=on(0, hours=1)),
        identify(ICP_OWNER, user="u-dana", anon="a-1", when=on(1)),
        page("/compare/spreadsheets", user="u-dana", when=on(2)),
        track("Demo Requested", user="u-dana", when=on(3)),
        page("/blog/post-9", user="u-dana", when=on(10)),  # not evidence of evaluation
        track("Contract Signed", user="u-dana", when=on(50)),
    ]


def test_the_search_ad_visitor_walks_the_journey_and_falls_back_when_quiet():
    run = replay(*the_search_ad_visitor())
    assert moves(run) == [
        (None, "out_of_market", "evidence"),
        ("out_of_market", "trigger", "evidence"),
        (None, "trigger", "merge"),  # the anonymous visits become Dana's
        ("trigger", "consideration", "evidence"),
        ("consideration", "evaluation", "evidence"),
        ("evaluation", "consideration", "quiet"),
        ("consideration", "decision", "evidence"),
    ]
    by_phase = {m["to_phase"]: m for m in run.journey_moves if m["reason"] == "evidence"}
    assert by_phase["trigger"]["rule_id"] == "problem-content"
    assert by_phase["consideration"]["content"] == "/compare/spreadsheets"
    assert by_phase["evaluation"]["content"] == "demo requested"
    # The quiet time counts from the last evidence (the demo request, day 3): the blog post
    # on day 10 is not evidence of evaluation; the fall-back is dated when it ran out.
    quiet = next(m for m in run.journey_moves if m["reason"] == "quiet")
    assert quiet["occurred_at"] == day(3 + 30)
    assert quiet["seen"] == ["/blog/post-9"]
    lead = run.ws.leads["u-dana"]
    assert lead.journey is not None and lead.journey.phase == "decision"
    # Each move is numbered in the lead's own sequence, after the merge.
    assert [m["seq"] for m in run.journey_moves if m["subject_id"] == "u-dana"] == [1, 2, 3, 4, 5]


def test_the_handoff_says_where_the_lead_is_in_the_journey():
    run = replay(*the_search_ad_visitor())
    to_sal = next(t for t in run.transitions if t["to_stage"] == "sal")
    assert to_sal["journey_phase"] == "evaluation"
    handoff = next(n for n in run.notifications if n["stage"] == "sal")
    assert handoff["journey_phase"] == "evaluation"


def test_channels_give_the_first_and_last_touch_and_the_channel_into_each_phase():
    run = replay(
        *the_search_ad_visitor()[:3],
        page("/pricing", user="u-dana", when=on(2), context={"campaign": {"medium": "email"}}),
        page(
            "/customers/acme",
            user="u-dana",
            when=on(4),
            context={"page": {"referrer": "https://www.linkedin.com/feed"}},
        ),
        page("/blog/post-2", user="u-dana", when=on(5)),  # direct: not a touch that counts last
    )
    journey = run.ws.leads["u-dana"].journey
    assert journey is not None
    assert journey.first_touch == ["paid", day(0)]
    assert journey.last_touch == ["social", day(4)]
    assert journey.entered_via == {
        "out_of_market": "paid",
        "trigger": "direct",
        "consideration": "email",
        "evaluation": "social",
    }


@pytest.mark.parametrize(
    ("context", "channel"),
    [
        ({}, "direct"),
        ({"campaign": {"source": "google", "medium": "cpc"}}, "paid"),
        ({"campaign": {"source": "newsletter", "medium": "email"}}, "email"),
        ({"campaign": {"source": "linkedin", "medium": "social"}}, "social"),
        ({"page": {"referrer": "https://www.google.com/search?q=fleet"}}, "search"),
        ({"referrer": {"type": "facebook", "url": "https://m.facebook.com/"}}, "social"),
        ({"page": {"referrer": "https://partner.example/list"}}, "referral"),
        ({"campaign": {"source": "partner"}}, "referral"),
    ],
)
def test_each_event_comes_from_a_channel(context: dict[str, Any], channel: str):
    book = compile_journey(starter_ruleset().journey)  # type: ignore[arg-type]
    assert channel_of(book, parsed(page("/", user="u", context=context))) == channel


def test_the_channel_mapping_is_the_rule_sets_to_change():
    document = starter_document().model_dump(mode="json", exclude_none=True)
    document["journey"]["channels"] = [
        {"id": "partner", "when": {"type": "page", "context.campaign.source": "partner"}}
    ]
    changed = RuleSetDocument.model_validate(document)
    book = compile_journey(changed.journey)  # type: ignore[arg-type]
    assert (
        channel_of(book, parsed(page("/", user="u", context={"campaign": {"source": "partner"}})))
        == "partner"
    )
    assert channel_of(book, parsed(page("/", user="u", context=SEARCH_AD))) == "direct"


def test_an_account_is_as_far_as_two_of_its_committee_roles_got():
    run = replay(*committee_journey())
    assert moves(run, "account") == [
        (None, "consideration", "members"),  # Chris in evaluation, Tina compares
        ("consideration", "evaluation", "members"),  # Tina attends the webinar
    ]
    account = run.ws.accounts[ACCOUNT]
    assert account.journey is not None and account.journey.phase == "evaluation"
    # Sam, the intern, holds no committee role: his phase does not count.
    assert run.ws.leads["u-sam"].journey.phase == "consideration"  # type: ignore[union-attr]


def test_counting_members_instead_of_roles_is_a_setting():
    document = starter_document().model_dump(mode="json", exclude_none=True)
    document["journey"]["accounts"] = {"at_least": 3, "count": "members"}
    run = Replay(Engine(compile_ruleset_from(document)))
    run.feed([parsed(d) for d in committee_journey()], now=NOW)
    # Chris and Tina in evaluation; Sam and Eve in consideration: the third-furthest member.
    account = run.ws.accounts[ACCOUNT]
    assert account.journey is not None and account.journey.phase == "consideration"


def compile_ruleset_from(document: dict[str, Any]):
    from scoring_service.rules import compile_ruleset

    return compile_ruleset(RuleSetDocument.model_validate(document), 2)


def test_a_replay_of_the_same_events_walks_the_same_journey():
    docs = the_search_ad_visitor() + committee_journey()
    first, second = replay(*docs), replay(*docs)
    assert first.journey_moves == second.journey_moves
    assert first.journey_moves


def test_a_phase_can_only_fall_back_to_an_earlier_one():
    document = starter_document().model_dump(mode="json", exclude_none=True)
    document["journey"]["phases"][1]["falls_back_to"] = "loyalty"
    with pytest.raises(ValidationError, match="falls back"):
        RuleSetDocument.model_validate(document)


def test_phase_rules_read_behaviour_not_just_traits():
    document = starter_document().model_dump(mode="json", exclude_none=True)
    document["journey"]["phases"][0]["entered_by"] = [
        {"id": "ceo", "when": {"trait": "title", "contains": "ceo"}}
    ]
    with pytest.raises(ValidationError):
        RuleSetDocument.model_validate(document)


def test_without_a_journey_nobody_is_placed():
    document = starter_document().model_dump(mode="json", exclude_none=True)
    del document["journey"]
    run = Replay(Engine(compile_ruleset_from(document)))
    run.feed([parsed(d) for d in the_search_ad_visitor()], now=NOW)
    assert run.journey_moves == []
    assert all(t["journey_phase"] is None for t in run.transitions)
    assert run.ws.leads["u-dana"].journey is None


def _interleaved(docs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The same events, each person's in their order, the people interleaved otherwise
    (as partitions deliver them)."""
    rnd = random.Random(seed)
    queues: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        queues.setdefault(doc.get("userId") or doc.get("anonymousId") or "", []).append(doc)
    order = [key for key, queue in queues.items() for _ in queue]
    rnd.shuffle(order)
    return [queues[key].pop(0) for key in order]


def test_where_an_account_ends_does_not_depend_on_the_order_members_arrive_in():
    # Titles change from one identify call to the next: roles come and go without a phase
    # move; people switch companies.
    docs = [
        d
        for d in generate(events=4000, leads=120, accounts=7, anonymous_share=0.2, days=30)
        if isinstance(d, dict)
    ]
    phases = []
    for seed in range(4):
        run = replay(*_interleaved(docs, seed))
        phases.append(
            {
                account_id: account.journey.phase if account.journey else None
                for account_id, account in run.ws.accounts.items()
            }
        )
    assert any(phases[0].values())
    assert all(p == phases[0] for p in phases[1:])


def test_the_sites_own_pages_as_referrers_can_count_as_direct():
    """Browsers send the previous page as the referrer of in-site navigation: a first
    channel rule named `direct` keeps those from counting as referrals."""
    document = starter_document().model_dump(mode="json", exclude_none=True)
    own = {
        "id": "direct",
        "when": {"context.page.referrer": {"contains_any": ["://www.seller.example"]}},
    }
    document["journey"]["channels"] = [own, *document["journey"].get("channels", [])]
    book = compile_journey(RuleSetDocument.model_validate(document).journey)  # type: ignore[arg-type]
    inside = {"page": {"referrer": "https://www.seller.example/blog"}}
    outside = {"page": {"referrer": "https://partner.example/list"}}
    assert channel_of(book, parsed(page("/", user="u", context=inside))) == "direct"
    assert channel_of(book, parsed(page("/", user="u", context=outside))) == "referral"
