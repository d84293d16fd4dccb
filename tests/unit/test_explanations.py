"""Explanations add up: every signal's contribution, and every stored event's, sums to the
score shown, to the cent, on a lead, in notifications and in the history."""

from __future__ import annotations

import math
import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.workload import generate
from scoring_service.engine import Engine
from scoring_service.intake import Event, parse_event
from scoring_service.pipeline import Workspace, score_event
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import LeadState
from stage_router.records import SignalDoc, apportion, score_doc, to_cents
from tests.helpers.factories import NOW, at, page, parsed

DAY = 86400.0


def cents(value: float) -> int:
    return round(value * 100)


def same_float(a: float, b: float) -> bool:
    """Equal, NaN to NaN, and a zero's sign too (JSON shows -0.0 and 0.0 apart)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def near_half_cents() -> st.SearchStrategy[float]:
    """Values a few units in the last place from a half cent, where rounding is hard."""
    return st.builds(
        lambda cents, steps: _nudged((cents + 0.5) / 100.0, steps),
        st.integers(min_value=-(10**9), max_value=10**9),
        st.integers(min_value=-4, max_value=4),
    )


def _nudged(value: float, steps: int) -> float:
    for _ in range(abs(steps)):
        value = math.nextafter(value, math.inf if steps > 0 else -math.inf)
    return value


@settings(max_examples=3000)
@given(
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=-1e7, max_value=1e7)
    | near_half_cents()
)
def test_to_cents_is_round_to_two_places_to_the_bit(value: float) -> None:
    assert same_float(to_cents(value), round(value, 2))


def test_to_cents_keeps_the_sign_of_a_zero_and_the_even_cent_of_a_tie() -> None:
    for value in (-0.001, -0.0, 0.0, 0.004, 0.125, 0.375, 2.675, -2.675, 1e9, 1e12, -1e12):
        assert same_float(to_cents(value), round(value, 2)), value


def assert_adds_up(score: dict, signals: list[SignalDoc]) -> None:
    fit = sum(cents(s["contribution"]) for s in signals if s["category"] == "fit")
    engagement = sum(cents(s["contribution"]) for s in signals if s["category"] == "engagement")
    assert fit == cents(score["fit"])
    assert engagement == cents(score["engagement"])
    assert fit + engagement == cents(score["total"])


@given(
    st.lists(
        st.floats(min_value=-500, max_value=500, allow_nan=False, allow_infinity=False),
        max_size=40,
    )
)
def test_apportioned_values_add_up_to_the_rounded_total_and_stay_within_a_cent(values):
    shares = apportion(values, sum(values))
    assert sum(cents(s) for s in shares) == (cents(sum(values)) if values else 0)
    for value, share in zip(values, shares, strict=True):
        assert abs(share - value) < 0.01 + 1e-9


def test_a_decayed_signal_shows_its_points_as_of_the_lead_clock():
    engine = Engine(starter_ruleset())
    lead = LeadState(lead_id="u1")
    for day in (0, 30):  # one half-life apart
        engine.apply_event(lead, parsed(page("/pricing", user="u1", when=at(day))), None, now=NOW)
    score, signals = engine.explain(lead)
    [pricing] = signals
    assert pricing["hits"] == 2 and pricing["points"] == 15
    assert pricing["contribution"] == 22.5  # 15 / 2 + 15
    assert score["engagement"] == 22.5
    # Thirty days later the whole score, and each part of it, has halved again.
    later, [pricing_later] = engine.explain(lead, at=lead.as_of + 30 * DAY)
    assert pricing_later["contribution"] == 11.25 == later["engagement"]


def test_hits_a_limit_ignores_are_shown_and_add_nothing():
    engine = Engine(starter_ruleset())
    lead = LeadState(lead_id="u1")
    for day in (0, 1, 2, 3):  # pricing counts 3 times a week
        engine.apply_event(lead, parsed(page("/pricing", user="u1", when=at(day))), None, now=NOW)
    _, [pricing] = engine.explain(lead)
    assert (pricing["hits"], pricing["ignored"]) == (3, 1)
    assert pricing["contribution"] == round(lead.engagement, 2)


def _workload() -> tuple[Engine, Workspace, list, dict[str, list[tuple[float, float, bool]]]]:
    """60 days of the benchmark's workload through the pure pipeline, with some leads
    recycled by sales on the way; returns what a service would store."""
    engine = Engine(starter_ruleset())
    ws = Workspace()
    rnd = random.Random(11)
    notifications: list = []
    stored: list[tuple[str, float, float]] = []  # (lead scored for, time, counted points)
    superseded: dict[int, bool] = {}
    for index, doc in enumerate(generate(events=6000, leads=400, seed=5, days=60)):
        event = parse_event(orjson.dumps(doc), now=NOW)
        if not isinstance(event, Event):
            continue
        scored = score_event(ws, engine, event, now=NOW)
        notifications.extend(scored.effects.notifications)
        # The default score's points (the history shares each score's on its own).
        default = [
            h for h in scored.effects.hits if "default" in engine.rules.book.scores_of(h.rule_id)
        ]
        stored.append((scored.lead_id, event.ts, sum(h.points for h in default if h.counted)))
        lead = ws.leads[ws.canonical(scored.lead_id)]
        if lead.stage in ("mql", "sal") and rnd.random() < 0.05:
            engine.apply_feedback(
                lead,
                outcome="rejected",
                reason="no budget",
                feedback_id=f"f{index}",
                at=event.ts,
                account=None,
                now=NOW,
            )
            # As the service does: the lead's stored events no longer count.
            for i, (lead_id, _, _) in enumerate(stored):
                if ws.canonical(lead_id) == lead.lead_id:
                    superseded[i] = True
    history: dict[str, list[tuple[float, float, bool]]] = {}
    for i, (lead_id, ts, points) in enumerate(stored):
        history.setdefault(ws.canonical(lead_id), []).append((ts, points, superseded.get(i, False)))
    return engine, ws, notifications, history


def test_every_lead_of_a_60_day_workload_is_explained_to_the_cent():
    engine, ws, notifications, history = _workload()
    leads = [ws.leads[lead_id] for lead_id in history]
    assert len(leads) > 300
    assert any(s.stage == "recycled" for s in leads)
    for lead in leads:
        # On the lead endpoint (as of now, some weeks after the last event)...
        assert_adds_up(*engine.explain(lead, at=NOW))
        # ...and in its history: the events' shares and the fit signals.
        score, signals = engine.explain(lead)
        shares, unlisted = engine.history_shares(lead, history[lead.lead_id])
        assert unlisted == 0, lead.lead_id  # every event is listed
        fit = sum(cents(s["contribution"]) for s in signals if s["category"] == "fit")
        assert fit + sum(cents(share) for share in shares) == cents(score["total"])
        for (_, _, was_superseded), share in zip(history[lead.lead_id], shares, strict=True):
            if was_superseded:
                assert share == 0
    assert len(notifications) > 50
    for notification in notifications:
        assert_adds_up(notification["score"], notification["signals"])


def test_a_listed_page_of_history_leaves_the_rest_as_unlisted():
    engine, ws, _, history = _workload()

    def older_half(lead_id: str) -> tuple[list, float]:
        events = history[lead_id]
        older = events[: len(events) // 2]
        clock = ws.leads[lead_id].as_of
        return older, sum(
            0.0 if gone else points * engine.rules.decay_factor(clock - ts)
            for ts, points, gone in older
        )

    lead_id = max(history, key=lambda k: older_half(k)[1])
    lead = ws.leads[lead_id]
    older, exact_older = older_half(lead_id)
    shares, unlisted = engine.history_shares(lead, history[lead_id][len(older) :])
    assert exact_older > 1
    assert abs(unlisted - exact_older) < 0.01 + 1e-9
    engagement = score_doc(lead.fit, lead.engagement)["engagement"]
    assert sum(cents(s) for s in shares) + cents(unlisted) == cents(engagement)


def test_a_rule_the_explaining_version_lacks_still_adds_up_with_unknown_points():
    engine = Engine(starter_ruleset())
    lead = LeadState(lead_id="u1")
    engine.apply_event(lead, parsed(page("/pricing", user="u1", when=at(0))), None, now=NOW)
    lead.signals["retired-rule"] = [4.0, lead.as_of, 2, 0, lead.as_of]
    lead.engagement += 4.0
    score, signals = engine.explain(lead)
    retired = next(s for s in signals if s["rule_id"] == "retired-rule")
    assert (retired["points"], retired["description"], retired["contribution"]) == (
        None,
        "retired-rule",
        4.0,
    )
    assert_adds_up(score, signals)


def test_a_state_stored_before_decayed_contributions_loads_as_if_hit_at_the_last_hit():
    lead = LeadState(lead_id="u1")
    lead.load_doc({"signals": {"pricing-page": [30.0, 2, 1_700_000_000.0]}})
    assert lead.signals["pricing-page"] == [30.0, 1_700_000_000.0, 2, 0, 1_700_000_000.0]
