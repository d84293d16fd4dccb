"""Identity stitching in the pure pipeline."""

from __future__ import annotations

import pytest

from scoring_service.engine import Engine
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import HITS
from tests.helpers.factories import NOW, alias, at, identify, page, parsed


def decayed(points: float, hours_ago: float) -> float:
    return points * 0.5 ** (hours_ago / (30 * 24))


def replay_of(*docs: dict) -> Replay:
    replay = Replay(Engine(starter_ruleset()))
    replay.feed([parsed(d) for d in docs], now=NOW)
    return replay


def test_anonymous_browsing_merges_into_the_identified_lead_once():
    replay = replay_of(
        page("/pricing", anon="a1", when=at(0)),
        page("/pricing", anon="a1", when=at(0, hours=1)),
        identify(
            {"email": "d@t.example", "title": "Owner"}, user="u1", anon="a1", when=at(0, hours=2)
        ),
        page("/pricing", anon="a1", when=at(0, hours=3)),
        identify({"email": "d@t.example"}, user="u1", anon="a1", when=at(0, hours=4)),
    )
    assert set(replay.ws.leads) == {"u1"}
    lead = replay.ws.leads["u1"]
    assert lead.signals["pricing-page"][HITS] == 3
    assert lead.engagement == pytest.approx(sum(decayed(15, h) for h in (4, 3, 1)))
    assert lead.fit == 15
    assert [t["reason"] for t in replay.transitions] == ["threshold"]


def test_alias_merges_and_keeps_the_furthest_stage():
    replay = replay_of(
        identify({"email": "a@x.example", "title": "VP Sales"}, user="old", when=at(0)),
        page("/pricing", user="old", when=at(0, hours=1)),
        page("/pricing", user="old", when=at(0, hours=2)),
        page("/pricing", user="old", when=at(0, hours=3)),
        page("/blog", user="new", when=at(0, hours=4)),
        alias("old", "new", when=at(0, hours=5)),
    )
    assert "old" not in replay.ws.leads
    new = replay.ws.leads["new"]
    assert new.stage == "mql"
    merge = replay.transitions[-1]
    assert (merge["lead_id"], merge["reason"], merge["to_stage"]) == ("new", "merge", "mql")
    assert new.traits["email"] == "a@x.example"
    assert new.engagement == pytest.approx(sum(decayed(15, h) for h in (4, 3, 2)) + decayed(1, 1))


def test_first_link_wins():
    replay = replay_of(
        page("/blog", anon="a1", when=at(0)),
        identify({}, user="u1", anon="a1", when=at(0, hours=1)),
        identify({}, user="u2", anon="a1", when=at(0, hours=2)),
        page("/blog", anon="a1", when=at(0, hours=3)),
    )
    assert replay.ws.links == {"a1": "u1"}
    assert replay.ws.leads["u1"].signals["blog"][HITS] == 2
    assert "blog" not in replay.ws.leads["u2"].signals
