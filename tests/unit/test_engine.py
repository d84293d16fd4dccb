"""The rules engine on the starter rule set: exact scores and stage moves."""

from __future__ import annotations

import pytest

from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import HITS, IGNORED
from tests.helpers.factories import NOW, at, group, identify, page, parsed, track

OWNER = {
    "email": "dana@trucking-co.com",
    "title": "Owner",
    "company": {"name": "Trucking Co", "employees": 14, "country": "US"},
}

# What the starter set needs before sales accepts a lead: an address, a role, a company.
SALES_READY = {"email": "a@b.example", "title": "Analyst", "company": {"name": "B Inc"}}


def run(*docs: dict) -> Replay:
    replay = Replay(Engine(starter_ruleset()))
    replay.feed([parsed(d) for d in docs], now=NOW)
    return replay


def test_fit_sums_matching_trait_rules_once():
    replay = run(identify(OWNER, user="u1"), identify(OWNER, user="u1"))
    lead = replay.ws.leads["u1"]
    assert lead.fit == 15 + 10 + 5
    assert sorted(lead.fit_rules) == ["decision-maker", "icp-country", "icp-size"]


def test_negative_fit_and_engagement_points():
    replay = run(
        identify({"email": "kid@gmail.com", "title": "Student"}, user="u1"),
        page("/careers/open", user="u1", when=at(1)),
    )
    lead = replay.ws.leads["u1"]
    assert lead.fit == -30  # the personal address is an exclusion, not points
    assert lead.engagement == -20
    assert lead.held is None  # nothing to hold yet: the score is far from mql
    assert lead.total == -50


def test_limit_ignores_hits_over_the_count_within_the_window():
    docs = [page("/pricing", user="u1", when=at(day)) for day in (0, 1, 2, 3)]
    replay = run(*docs)
    lead = replay.ws.leads["u1"]
    assert lead.signals["pricing-page"][HITS] == 3  # the fourth visit within 7 days is ignored
    assert lead.signals["pricing-page"][IGNORED] == 1
    # and a visit a full window after the first counts again
    replay.feed([parsed(page("/pricing", user="u1", when=at(7)))], now=NOW)
    assert lead.signals["pricing-page"][HITS] == 4


def test_decay_halves_engagement_every_half_life_in_event_time():
    replay = run(
        track("Email Replied", user="u1", when=at(0)),
        track("Email Replied", user="u1", when=at(30)),
    )
    lead = replay.ws.leads["u1"]
    assert lead.engagement == pytest.approx(10 * 0.5 + 10)


def test_out_of_order_events_give_the_in_order_score():
    docs = [track("Email Replied", user="u1", when=at(d)) for d in (0, 12, 45)]
    forward = run(*docs).ws.leads["u1"]
    backward = run(*reversed(docs)).ws.leads["u1"]
    assert backward.engagement == pytest.approx(forward.engagement)
    assert backward.as_of == forward.as_of


def test_threshold_promotes_to_mql_with_notification():
    docs = [identify(OWNER, user="u1", when=at(0))]
    docs += [page("/pricing", user="u1", when=at(0, hours=h)) for h in (1, 2)]
    replay = run(*docs)
    assert replay.ws.leads["u1"].stage == "mql"
    [transition] = replay.transitions
    assert transition["from_stage"] == "lead" and transition["to_stage"] == "mql"
    assert transition["reason"] == "threshold"
    engagement = round(15 * 0.5 ** (1 / (30 * 24)) + 15, 2)  # the first visit is an hour old
    assert transition["score"] == {
        "total": round(30 + engagement, 2),
        "fit": 30.0,
        "engagement": engagement,
    }
    [note] = replay.notifications
    assert note["notification_id"] == f"{transition['transition_id']}:promotion"
    assert note["priority"] == "warm"
    assert note["respond_by"] == at(1, hours=2)  # mql SLA 24 h after entry


@pytest.mark.parametrize(
    "name,rule", [("Demo Requested", "demo-request"), ("Trial Started", "trial-started")]
)
def test_instant_trigger_jumps_straight_to_sal_in_one_transition(name, rule):
    replay = run(
        identify(SALES_READY, user="u1", when=at(0)),
        track(name, user="u1", when=at(0, hours=1)),
    )
    [transition] = replay.transitions
    assert (transition["from_stage"], transition["to_stage"]) == ("lead", "sal")
    assert (transition["reason"], transition["rule_id"]) == ("trigger", rule)
    assert replay.notifications[0]["priority"] == "hot"
    assert replay.notifications[0]["respond_by"] == at(0, hours=2)


def test_mql_requires_holds_a_trigger_until_the_email_arrives():
    replay = run(track("Demo Requested", user="u1", when=at(0)))
    assert replay.ws.leads["u1"].stage == "lead"
    assert replay.transitions == []
    replay.feed([parsed(identify(SALES_READY, user="u1", when=at(0, hours=1)))], now=NOW)
    [transition] = replay.transitions
    assert (transition["to_stage"], transition["reason"], transition["rule_id"]) == (
        "sal",
        "trigger",
        "demo-request",
    )


def test_disqualifier_stops_automatic_promotion_but_scoring_goes_on():
    replay = run(
        identify({"email": "spy@competitor.example"}, user="u1", when=at(0)),
        track("Demo Requested", user="u1", when=at(0, hours=1)),
    )
    lead = replay.ws.leads["u1"]
    assert lead.stage == "disqualified"
    assert [t["to_stage"] for t in replay.transitions] == ["disqualified"]
    assert replay.transitions[0]["rule_id"] == "competitor"
    assert lead.engagement == 30


def test_account_traits_feed_fit_rules():
    from scoring_service.rule_set_files import starter_document
    from scoring_service.rules import compile_ruleset

    doc = starter_document().model_dump(by_alias=True)
    doc["rules"].append(
        {
            "id": "acct-us",
            "category": "fit",
            "points": 7,
            "when": {"trait": "account.country", "equals": "us"},
        }
    )
    from schemas.rule_set import RuleSetDocument

    engine = Engine(compile_ruleset(RuleSetDocument.model_validate(doc), 2))
    replay = Replay(engine)
    replay.feed([parsed(group("acct-9", {"country": "US"}, user="u1"))], now=NOW)
    # The starter set's own country rule reads the account too.
    assert replay.ws.leads["u1"].fit == 7 + 5
    assert sorted(replay.ws.leads["u1"].fit_rules) == ["acct-us", "icp-country"]
    assert replay.ws.leads["u1"].account_id == "acct-9"


def test_matching_is_case_insensitive():
    replay = run(track("demo REQUESTED", user="u1"), page("/PRICING/Plans", user="u1"))
    assert set(replay.ws.leads["u1"].signals) == {"demo-request", "pricing-page"}


def test_duplicate_message_is_scored_once():
    doc = track("Email Replied", user="u1")
    replay = run(doc, doc)
    assert replay.ws.leads["u1"].signals["email-reply"][HITS] == 1
