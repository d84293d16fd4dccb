"""The starter rule set, read as the journeys sales and marketing agreed on."""

from __future__ import annotations

import pytest

from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import LeadState
from tests.helpers.factories import NOW, at, group, identify, page, parsed, track

ICP_OWNER = {
    "email": "dana@haulers.example",
    "title": "Owner",
    "company": {
        "name": "Haulers Inc",
        "industry": "Logistics",
        "employees": 40,
        "country": "US",
    },
}


def journey(*docs: dict) -> Replay:
    replay = Replay(Engine(starter_ruleset()))
    replay.feed([parsed(d) for d in docs], now=NOW)
    return replay


def fit_of(traits: dict) -> tuple[float, list[str]]:
    lead = LeadState(lead_id="u", traits=traits)
    Engine(starter_ruleset()).refresh_fit(lead, None)
    return lead.fit, sorted(lead.fit_rules)


def test_a_gmail_student_who_requests_a_demo_stays_out_of_sal_and_sales_hears_nothing():
    replay = journey(
        identify(
            {"email": "kid@gmail.com", "title": "Student", "company": {"name": "State U"}},
            user="u",
            when=at(0),
        ),
        page("/pricing", user="u", when=at(0, hours=1)),
        track("Demo Requested", user="u", when=at(0, hours=2)),
    )
    lead = replay.ws.leads["u"]
    assert lead.stage == "lead"
    assert replay.transitions == [] and replay.notifications == []
    assert lead.held == "excluded: personal-email"


def test_an_icp_logistics_owner_who_views_pricing_and_requests_a_demo_reaches_sal_hot():
    replay = journey(
        identify(ICP_OWNER, user="u", when=at(0)),
        page("/pricing", user="u", when=at(0, hours=1)),
        track("Demo Requested", user="u", when=at(0, hours=2)),
    )
    assert fit_of(ICP_OWNER) == (40, ["decision-maker", "icp-country", "icp-industry", "icp-size"])
    # 40 fit + 15 pricing crosses mql; the demo request hands the lead to sales at once.
    assert [(t["to_stage"], t["reason"]) for t in replay.transitions] == [
        ("mql", "threshold"),
        ("sal", "trigger"),
    ]
    hot = replay.notifications[-1]
    assert (hot["stage"], hot["priority"]) == ("sal", "hot")
    assert hot["profile"] == {
        "email": "dana@haulers.example",
        "title": "Owner",
        "company": "Haulers Inc",
    }
    assert [s["rule_id"] for s in hot["signals"]][:2] == ["demo-request", "decision-maker"]


@pytest.mark.parametrize(
    ("title", "points", "rules"),
    [
        ("International Sales Director", 15, ["decision-maker"]),  # not an "intern"
        ("Product Owner", 0, []),  # owns a backlog, not the company
        ("Doctor", 0, []),  # not a "cto"
        ("Co-Founder & CEO", 15, ["decision-maker"]),
        ("Vice-Président, Opérations", 15, ["decision-maker"]),  # accents and hyphens fold
        ("Dispatch Coordinator", 5, ["influencer"]),
        ("VP Marketing", 15, ["decision-maker"]),  # an executive, not also an influencer
        ("Marketing Intern", -25, ["influencer", "student"]),
    ],
)
def test_title_rules_match_whole_words(title, points, rules):
    assert fit_of({"title": title}) == (points, rules)


def test_an_off_icp_industry_is_held_out_of_mql_with_the_reason_shown():
    traits = {**ICP_OWNER, "company": {**ICP_OWNER["company"], "industry": "Higher Education"}}
    replay = journey(
        identify(traits, user="u", when=at(0)),
        *[page("/pricing", user="u", when=at(0, hours=h)) for h in (1, 2, 3)],
    )
    lead = replay.ws.leads["u"]
    assert lead.total >= 50  # over the mql threshold, but held
    assert (lead.stage, lead.held) == ("lead", "excluded: off-icp-industry")


def test_an_excluded_lead_moves_on_when_a_work_address_replaces_the_personal_one():
    personal = {**ICP_OWNER, "email": "dana@gmail.com"}
    replay = journey(
        identify(personal, user="u", when=at(0)),
        track("Demo Requested", user="u", when=at(0, hours=1)),
    )
    assert replay.ws.leads["u"].stage == "lead"
    replay.feed([parsed(identify(ICP_OWNER, user="u", when=at(0, hours=2)))], now=NOW)
    [transition] = replay.transitions
    assert (transition["to_stage"], transition["rule_id"]) == ("sal", "demo-request")


def test_sales_needs_a_role_and_a_company_the_account_name_will_do():
    replay = journey(
        identify({"email": "sam@haulers.example"}, user="u", when=at(0)),
        track("Trial Started", user="u", when=at(0, hours=1)),
    )
    lead = replay.ws.leads["u"]
    # The trigger goes as far as the traits allow: marketing gets the lead to enrich.
    assert (lead.stage, lead.held) == ("mql", "sal requires title")
    assert [(t["to_stage"], t["rule_id"]) for t in replay.transitions] == [("mql", "trial-started")]
    replay.feed(
        [
            parsed(identify({"title": "Fleet Manager"}, user="u", when=at(0, hours=2))),
            parsed(group("acct-1", {"name": "Haulers Inc"}, user="u", when=at(0, hours=3))),
        ],
        now=NOW,
    )
    assert [t["to_stage"] for t in replay.transitions] == ["mql", "sal"]
    assert replay.ws.leads["u"].held is None


def test_a_lead_at_the_sql_threshold_moves_to_sql_and_the_crm_hears_with_the_profile():
    replay = journey(
        identify(ICP_OWNER, user="u", when=at(0)),
        track("Demo Requested", user="u", when=at(0, hours=1)),  # 70: sal
        *[page("/pricing", user="u", when=at(0, hours=h)) for h in (2, 3, 4)],  # ~115
        track("Webinar Attended", user="u", when=at(0, hours=5)),  # ~123
    )
    lead = replay.ws.leads["u"]
    assert lead.total >= 120
    assert [(t["to_stage"], t["reason"]) for t in replay.transitions] == [
        ("sal", "trigger"),
        ("sql", "threshold"),
    ]
    crm = replay.notifications[-1]
    assert (crm["stage"], crm["priority"]) == ("sql", "hot")
    assert crm["profile"]["company"] == "Haulers Inc"
    assert crm["profile"]["email"] == "dana@haulers.example"
    assert round(sum(s["contribution"] for s in crm["signals"]), 2) == crm["score"]["total"]


def test_careers_pages_count_against_and_small_signals_add_up():
    reader = journey(
        *[page(f"/case-studies/{i}", user="u", when=at(0, hours=i)) for i in range(4)],
        *[page(f"/compare/tool-{i}", user="u", when=at(0, hours=5 + i)) for i in range(2)],
        track("Webinar Attended", user="u", when=at(0, hours=8)),
    ).ws.leads["u"]
    candidate = journey(page("/careers", user="u", when=at(0))).ws.leads["u"]
    assert round(reader.engagement) == 4 * 5 + 2 * 5 + 8
    assert candidate.engagement == -20


WAREHOUSE_DIRECTOR = {
    "email": "sam@shelfco.example",
    "title": "Director of Operations",
    "company": {"name": "ShelfCo", "industry": "Wholesale", "employees": 120, "country": "CA"},
}


def test_the_second_line_a_wholesale_director_reading_about_warehouses_goes_to_that_team():
    replay = journey(
        identify(WAREHOUSE_DIRECTOR, user="u", when=at(0)),
        page("/products/wms", user="u", when=at(0, hours=1)),
        page("/warehouse/slotting", user="u", when=at(0, hours=2)),
    )
    lead = replay.ws.leads["u"]
    # Not the transport line's industry: 30 of fit there; the warehouse line adds its own.
    assert lead.total == 30
    [mql] = replay.transitions
    assert (mql["to_stage"], mql["qualified_by"]) == ("mql", ["warehouse"])
    # 40 of fit and the first page: over 50 at once.
    assert mql["scores"]["warehouse"] == {"total": 50, "fit": 40, "engagement": 10, "label": "A3"}
    assert replay.notifications[0]["owner"] == "queue:warehouse"
    # Its demo sends the lead to the warehouse team's sales at once.
    replay.feed([parsed(track("Warehouse Demo Requested", user="u", when=at(0, hours=3)))], now=NOW)
    sal = replay.transitions[-1]
    assert (sal["to_stage"], sal["reason"], sal["qualified_by"]) == (
        "sal",
        "trigger",
        ["warehouse"],
    )
    assert replay.notifications[-1]["owner"] == "queue:warehouse"


def test_a_transport_lead_reading_the_warehouse_pages_qualifies_for_both_lines():
    replay = journey(
        identify(ICP_OWNER, user="u", when=at(0)),
        page("/pricing", user="u", when=at(0, hours=1)),
    )
    [mql] = replay.transitions
    assert mql["qualified_by"] == ["default"] and mql["label"] == "A2"
    replay.feed(
        [parsed(page(f"/warehouse/{n}", user="u", when=at(0, hours=2 + n))) for n in range(3)],
        now=NOW,
    )
    assert len(replay.transitions) == 1  # no second mql
    told = replay.notifications[-1]
    assert (told["type"], told["qualified_by"], told["owner"]) == (
        "qualified",
        ["warehouse"],
        "queue:warehouse",
    )
