"""Several scores per lead (one per product line), grades, and adjustments with a reason, as
journeys through the pure pipeline."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.intake import Event, parse_event
from scoring_service.rule_set_files import starter_document, starter_ruleset
from scoring_service.rules import compile_ruleset
from scoring_service.simulation import replay_documents
from tests.helpers.factories import at, identify, page, track

NOW = time.time()
LINES = ["default", "fleet", "warehouse"]
GRADES = {"fit": [30, 20, 10], "engagement": [60, 30]}
RULES: list[dict[str, Any]] = [
    {
        "id": "vp",
        "category": "fit",
        "points": 10,
        "scores": LINES,
        "when": {"trait": "title", "words_any": ["vp"]},
    },
    {
        "id": "fleet-page",
        "category": "engagement",
        "points": 20,
        "scores": ["fleet"],
        "when": {"path": "/fleet*"},
    },
    {
        "id": "warehouse-page",
        "category": "engagement",
        "points": 20,
        "scores": ["warehouse"],
        "when": {"path": "/warehouse*"},
    },
    {
        "id": "pricing",
        "category": "engagement",
        "points": 10,
        "scores": LINES,
        "when": {"path": "/pricing*"},
    },
    {
        "id": "warehouse-demo",
        "category": "engagement",
        "points": 5,
        "scores": ["warehouse"],
        "promote_to": "sal",
        "when": {"event": "Warehouse Demo Requested"},
    },
]


PRICING_ONLY = {k: v for k, v in RULES[3].items() if k != "scores"}


def document(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "two product lines",
        "thresholds": {"mql": 50, "sal": 100},
        "notify_on": ["mql", "sal"],
        "scores": {
            "fleet": {"thresholds": {"mql": 40, "sal": 90}, "queue": "fleet", "grades": GRADES},
            "warehouse": {"thresholds": {"mql": 40, "sal": 90}, "queue": "warehouse"},
        },
        "grades": GRADES,
        "routing": {
            "default_queue": "sdr",
            "queues": {
                "sdr": {"owners": ["s1"]},
                "fleet": {"owners": ["f1"]},
                "warehouse": {"owners": ["w1"]},
            },
        },
        "rules": RULES,
        **overrides,
    }


def engine_of(**overrides: Any) -> Engine:
    return Engine(compile_ruleset(RuleSetDocument.model_validate(document(**overrides)), 1))


def feed(replay: Any, docs: list[dict[str, Any]]) -> None:
    events = [parse_event(orjson.dumps(doc), now=NOW) for doc in docs]
    assert all(isinstance(e, Event) for e in events)
    replay.feed(events, now=NOW)


def adds_up(notification: dict[str, Any]) -> None:
    """Every named score's signals add up to it, fit and engagement, to the cent."""
    for name, signals in notification["signals_by_score"].items():
        entry = notification["scores"][name]
        for category in ("fit", "engagement"):
            total = sum(s["contribution"] for s in signals if s["category"] == category)
            assert round(total, 2) == entry[category], (name, category)
    default = notification["scores"]["default"]
    assert round(sum(s["contribution"] for s in notification["signals"]), 2) == default["total"]


def test_a_lead_ready_for_fleet_becomes_mql_by_fleet_and_later_qualifies_for_warehouse_too():
    engine = engine_of()
    replay = replay_documents(
        engine,
        [
            identify({"title": "VP Logistics", "email": "v@acme.example"}, user="u", when=at(0)),
            page("/fleet/telematics", user="u", when=at(0, hours=1)),
            page("/fleet/pricing-calculator", user="u", when=at(0, hours=2)),
        ],
        now=NOW,
    )
    [mql] = replay.transitions
    assert (mql["to_stage"], mql["reason"], mql["qualified_by"]) == ("mql", "threshold", ["fleet"])
    assert mql["scores"]["fleet"]["total"] == 50 and mql["scores"]["warehouse"]["total"] == 10
    assert mql["scores"]["default"] == {**mql["score"], "label": "C3"}
    [told] = replay.notifications
    assert told["owner"] == "queue:fleet" and told["qualified_by"] == ["fleet"]
    assert told["scores"]["fleet"]["label"] == "C2"  # fit 10 (C), engagement 40 (2)
    adds_up(told)
    lead = replay.ws.leads["u"]
    assert lead.total == 10  # the default score: fleet pages do not count for it

    # Warehouse pages: that score qualifies too: its sales hear of it, no second mql.
    feed(
        replay,
        [
            page("/warehouse/racking", user="u", when=at(0, hours=3)),
            page("/warehouse/wms", user="u", when=at(0, hours=4)),
        ],
    )
    assert len(replay.transitions) == 1
    qualified = replay.notifications[-1]
    assert (qualified["type"], qualified["stage"], qualified["owner"]) == (
        "qualified",
        "mql",
        "queue:warehouse",
    )
    assert qualified["qualified_by"] == ["warehouse"]
    assert qualified["scores"]["warehouse"]["total"] == 50
    adds_up(qualified)
    # Once per score and stage.
    feed(replay, [page("/warehouse/x", user="u", when=at(0, hours=5))])
    assert len(replay.notifications) == 2


def test_a_trigger_promotes_for_its_own_scores_and_sends_the_lead_to_their_queue():
    engine = engine_of()
    replay = replay_documents(
        engine, [track("Warehouse Demo Requested", user="u", when=at(0))], now=NOW
    )
    [sal] = replay.transitions
    assert (sal["to_stage"], sal["reason"], sal["qualified_by"]) == (
        "sal",
        "trigger",
        ["warehouse"],
    )
    assert replay.notifications[0]["owner"] == "queue:warehouse"


def test_a_qualification_expression_decides_which_scores_move_the_lead():
    engine = engine_of(qualify={"mql": "fleet >= 60 or (warehouse and default)"})
    docs = [
        identify({"title": "VP"}, user="u", when=at(0)),
        page("/fleet/a", user="u", when=at(0, hours=1)),
        page("/fleet/b", user="u", when=at(0, hours=2)),
    ]
    replay = replay_documents(engine, docs, now=NOW)
    assert replay.transitions == []  # fleet is 50: over its threshold, not over 60
    feed(replay, [page("/pricing", user="u", when=at(0, hours=3))])
    [mql] = replay.transitions
    assert mql["qualified_by"] == ["fleet"] and mql["scores"]["fleet"]["total"] == 60


def test_one_score_rule_sets_keep_their_records_with_the_default_score_named():
    engine = Engine(
        compile_ruleset(
            RuleSetDocument.model_validate(
                {"name": "one", "thresholds": {"mql": 20, "sal": 90}, "rules": [PRICING_ONLY]}
            ),
            1,
        )
    )
    replay = replay_documents(
        engine, [page("/pricing", user="u", when=at(0, hours=h)) for h in (0, 1)], now=NOW
    )
    [mql] = replay.transitions
    assert mql["scores"] == {"default": {**mql["score"], "label": None}}
    assert mql["qualified_by"] == ["default"] and mql["label"] is None
    assert replay.notifications[0]["signals_by_score"] == {}


def test_an_annual_reset_sets_engagement_to_zero_and_the_reason_is_on_the_move():
    engine = engine_of()
    replay = replay_documents(
        engine,
        [page("/fleet/a", user="u", when=at(0)), page("/pricing", user="u", when=at(0, hours=2))],
        now=NOW,
    )
    lead = replay.ws.leads["u"]
    assert engine.score_parts(lead)["fleet"] == (0.0, 30.0)
    assert replay.transitions == []
    effects = engine.adjust(
        lead,
        scores=LINES,
        operation="set",
        value=0.0,
        at=lead.as_of or 0.0,
        caused_by="adjust:admin",
        detail="annual_reset",
        account=None,
        now=NOW,
    )
    assert effects.transitions == []
    assert {name: parts[1] for name, parts in engine.score_parts(lead).items()} == {
        name: 0.0 for name in LINES
    }
    score, signals = engine.explain(lead, score="fleet")
    assert score["engagement"] == 0.0
    assert round(sum(s["contribution"] for s in signals), 2) == 0.0
    assert "adjust:fleet" in {s["rule_id"] for s in signals}
    # An add that earns a stage moves the lead, with the reason on the transition.
    effects = engine.adjust(
        lead,
        scores=["warehouse"],
        operation="add",
        value=45.0,
        at=lead.as_of or 0.0,
        caused_by="adjust:admin",
        detail="event attended",
        account=None,
        now=NOW,
    )
    [move] = effects.transitions
    assert (move["to_stage"], move["reason"], move["reason_detail"]) == (
        "mql",
        "adjustment",
        "event attended",
    )
    assert move["qualified_by"] == ["warehouse"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rules": [{**RULES[1], "scores": ["fleet2"]}]}, "rules[0] (fleet-page) counts for score"),
        ({"qualify": {"mql": "fleet or"}}, "qualify.mql: ends too early"),
        ({"qualify": {"sal": "fleet > x"}}, "qualify.sal: expected a number"),
        ({"qualify": {"mql": "trucks"}}, "'trucks' (character 1) is not a score"),
        ({"scores": {"default": {"thresholds": {"mql": 1, "sal": 2}}}}, "is the default score"),
        (
            {
                "scores": {
                    "fleet": {"thresholds": {"mql": 1, "sal": 2}, "queue": "nowhere"},
                    "warehouse": {"thresholds": {"mql": 1, "sal": 2}},
                }
            },
            "scores.fleet.queue is 'nowhere'",
        ),
        ({"grades": {"fit": [10, 20, 30], "engagement": [2, 1]}}, "from high to low"),
        (
            {"scores": {f"s{i}": {"thresholds": {"mql": 1, "sal": 2}} for i in range(25)}},
            "at most 24 items",
        ),
    ],
)
def test_score_declarations_are_validated_with_located_errors(change, message):
    with pytest.raises(ValidationError) as caught:
        RuleSetDocument.model_validate(document(**change))
    assert message in str(caught.value)


GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
CUBOT = "Mozilla/5.0 (Linux; Android 11; CUBOT KINGKONG 5 Pro) Chrome/120.0 Mobile Safari/537.36"


def test_a_crawlers_page_views_score_nothing_and_a_persons_do():
    engine = engine_of()
    replay = replay_documents(
        engine,
        [
            page("/pricing", user="u", when=at(0), context={"userAgent": agent})
            for agent in (GOOGLEBOT, GOOGLEBOT.upper(), CHROME, CUBOT)
        ],
        now=NOW,
    )
    assert replay.ws.leads["u"].total == 20  # Chrome's and the Cubot phone's views
    assert replay.scored_for == ["u", "u"]


def test_the_crawler_list_is_the_rule_sets_and_an_empty_list_turns_it_off():
    named = engine_of(bots={"user_agents": ["chrome/131"]})
    off = engine_of(bots={"user_agents": []})
    docs = [
        page("/pricing", user="u", when=at(0), context={"userAgent": a})
        for a in (GOOGLEBOT, CHROME)
    ]
    assert replay_documents(named, docs, now=NOW).ws.leads["u"].total == 10
    assert replay_documents(off, docs, now=NOW).ws.leads["u"].total == 20


def test_the_running_sums_of_named_scores_equal_their_signals_after_a_long_workload():
    import copy
    import random

    from bench.workload import generate

    rnd = random.Random(5)
    docs = []
    for doc in generate(events=6000, leads=300, seed=9, days=90):
        docs.append(doc)
        if doc.get("type") == "page" and rnd.random() < 0.3:
            # The warehouse line's pages too, so its score has engagement to keep.
            extra = dict(doc, messageId=doc["messageId"] + "-w")
            extra["properties"] = {"path": rnd.choice(["/warehouse/a", "/products/wms"])}
            docs.append(extra)
    engine = Engine(starter_ruleset())
    replay = replay_documents(engine, docs, now=NOW)
    checked = 0
    for state in replay.ws.leads.values():
        derived = copy.deepcopy(state)
        derived.fit_by = derived.engagement_by = None
        kept, fresh = engine.totals(state), engine.totals(derived)
        assert kept.keys() == fresh.keys() == {"default", "warehouse"}
        for name in kept:
            assert abs(kept[name] - fresh[name]) < 1e-6, (state.lead_id, name)
        checked += fresh["warehouse"] != 0
    assert checked > 50
    # Every named score's explanation adds up to it, as the default one's does.
    for state in replay.ws.leads.values():
        score, signals = engine.explain(state, score="warehouse")
        assert round(sum(s["contribution"] for s in signals), 2) == score["total"]


def test_an_account_has_every_score_its_members_and_fit_rules_give_it():
    from tests.helpers.factories import group

    engine = Engine(starter_ruleset())
    company = {"name": "ShelfCo", "industry": "Wholesale", "employees": 120, "country": "CA"}
    docs: list[dict[str, Any]] = []
    for n, title in enumerate(["Owner", "Head of Operations"]):
        user = f"m{n}"
        docs += [
            identify({"title": title, "email": f"{user}@shelfco.example"}, user=user, when=at(0)),
            group("acct-1", company, user=user, when=at(0, hours=1)),
            *[
                page(f"/warehouse/{k}", user=user, when=at(0, hours=2 + k), context={})
                for k in range(3)
            ],
        ]
    replay = replay_documents(engine, docs, now=NOW)
    account = replay.ws.accounts["acct-1"]
    scores = engine.accounts.score_docs(account)
    # Size and country for both lines; the wholesale industry is the warehouse line's.
    assert (scores["default"]["fit"], scores["warehouse"]["fit"]) == (15, 30)
    assert scores["default"]["engagement"] == 0  # no reading for the transport line
    # Two members, three pages each (decayed by the hours since): their warehouse engagement.
    members = [engine.score_parts(replay.ws.leads[m])["warehouse"][1] for m in ("m0", "m1")]
    assert 59 < scores["warehouse"]["engagement"] == round(sum(members), 2) <= 60
    assert scores["warehouse"]["coverage"] == scores["default"]["coverage"]
    assert all(t["scores"]["default"] == t["score"] for t in replay.account_transitions)


def test_a_simulation_and_an_impact_report_read_every_score():
    from scoring_service.simulation import ImpactReport, replay_lead, simulate

    engine = engine_of()
    docs = [
        identify({"title": "VP"}, user="u", when=at(0)),
        page("/fleet/a", user="u", when=at(0, hours=1)),
        page("/fleet/b", user="u", when=at(0, hours=2)),
    ]
    result = simulate(engine, docs, now=NOW)
    [lead] = result["leads"]
    assert lead["scores"]["fleet"]["total"] == 50 and lead["qualified"] == {"fleet": "mql"}
    assert [step["scores"]["fleet"] for step in lead["trajectory"]] == [10, 30, 50]
    assert round(sum(s["contribution"] for s in lead["signals_by_score"]["fleet"]), 2) == 50
    # An impact report: a candidate where only warehouse qualifies for mql holds the lead.
    stricter = engine_of(qualify={"mql": "warehouse"})
    events = [e for d in docs if isinstance(e := parse_event(orjson.dumps(d), now=NOW), Event)]
    report = ImpactReport(active_version=1, candidate_version=2)
    report.add(
        "u",
        replay_lead(engine, "u", events, None, now=NOW),
        replay_lead(stricter, "u", events, None, now=NOW),
    )
    scores = report.to_dict()["scores"]
    assert scores["fleet"]["mean_active"] == scores["fleet"]["mean_candidate"] == 50
    assert (scores["fleet"]["qualified_active"], scores["fleet"]["qualified_candidate"]) == (1, 0)
    assert report.to_dict()["moved"] == 1  # mql under the active version, lead under the other


def test_an_accounts_engagement_adjusted_per_score_still_adds_up():
    from tests.helpers.factories import group

    engine = Engine(starter_ruleset())
    company = {"name": "ShelfCo", "industry": "Wholesale", "employees": 120, "country": "CA"}
    docs = [
        identify({"title": "Owner", "email": "o@shelfco.example"}, user="m", when=at(0)),
        group("acct-1", company, user="m", when=at(0, hours=1)),
        page("/warehouse/a", user="m", when=at(0, hours=2)),
        page("/pricing", user="m", when=at(0, hours=2)),
    ]
    replay = replay_documents(engine, docs, now=NOW)
    account = replay.ws.accounts["acct-1"]
    scorer = engine.accounts
    clock = account.as_of or 0.0
    scorer.adjust(account, scores=["warehouse"], operation="set", value=0.0, at=clock)
    scores = scorer.score_docs(account)
    assert scores["warehouse"]["engagement"] == 0 and scores["default"]["engagement"] == 15
    scorer.adjust(account, scores=["default"], operation="add", value=20.0, at=clock)
    score, _, _, members = scorer.explain(account)
    assert score["engagement"] == 35
    assert {m["lead_id"]: m["contribution"] for m in members} == {"m": 15, "adjust:default": 20}
    assert sum(m["contribution"] for m in members) == score["engagement"]
    # The adjustment is kept with the account and decays like engagement.
    restored = type(account)(account.account_id)
    restored.load_doc(account.to_doc())
    assert restored.adjusted == account.adjusted


def test_the_benchmarks_one_score_set_is_the_starter_without_its_second_line():
    from bench.engine_bench import one_score_document

    one = compile_ruleset(one_score_document(), 1)
    starter = starter_ruleset()
    assert not one.book.several and starter.book.several

    # Every rule that counts for the default score stays, lead and account ones alike.
    def counting_for_default(rules: Any) -> set[str]:
        return {r.id for r in rules if "default" in (r.scores or ["default"])}

    one_doc, starter_doc = one_score_document(), starter_document()
    assert {r.id for r in one_doc.rules} == counting_for_default(starter_doc.rules)
    assert one_doc.accounts is not None and starter_doc.accounts is not None
    assert {r.id for r in one_doc.accounts.fit} == counting_for_default(starter_doc.accounts.fit)


def test_a_simulation_leaves_out_crawlers_exactly_as_the_replay_does():
    from scoring_service.simulation import simulate

    engine = Engine(starter_ruleset())
    docs = [
        page("/pricing", user="u", when=at(0), context={"userAgent": CHROME}),
        page("/pricing", user="u", when=at(0.1), context={"userAgent": GOOGLEBOT}),
        page("/careers", user="v", when=at(0.2), context={"userAgent": GOOGLEBOT.upper()}),
        page("/product", user="u", when=at(0.3), context={"userAgent": CUBOT}),
    ]
    simulated = simulate(engine, docs, now=NOW)
    replay = replay_documents(engine, docs, now=NOW)
    assert simulated["crawlers"] == [1, 2]
    assert {lead["lead_id"] for lead in simulated["leads"]} == set(replay.ws.leads) == {"u"}
    [lead] = simulated["leads"]
    assert lead["score"]["total"] == pytest.approx(replay.ws.leads["u"].total, abs=0.01)
    assert [step["index"] for step in lead["trajectory"]] == [0, 3]
