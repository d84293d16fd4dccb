"""Laws of the engine that hold for any input (hypothesis)."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring_service.engine import Engine
from scoring_service.lead_scores import within_limit
from scoring_service.pipeline import Replay
from scoring_service.rule_set_files import starter_ruleset
from tests.helpers.factories import NOW, at, parsed, track

ENGINE = Engine(starter_ruleset())
days = st.floats(min_value=0, max_value=120, allow_nan=False).map(lambda d: round(d, 3))


def engagement_of(times: list[float]) -> float:
    replay = Replay(ENGINE)
    # A rule without a limit: limits may count a late hit differently by design.
    replay.feed([parsed(track("Demo Requested", user="u", when=at(t))) for t in times], now=NOW)
    return replay.ws.leads["u"].engagement


@settings(max_examples=100, deadline=None)
@given(st.lists(days, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_decay_is_independent_of_arrival_order(times, rnd):
    shuffled = list(times)
    rnd.shuffle(shuffled)
    assert abs(engagement_of(times) - engagement_of(shuffled)) < 1e-9


def count_in_window(counted: list[float], start: float, window: float) -> int:
    return bisect_left(counted, start + window) - bisect_left(counted, start)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=10),
)
def test_limit_never_lets_a_window_hold_more_than_its_count(times, count, window):
    counted: list[float] = []
    ignored: list[float] = []
    for t in times:
        if within_limit(counted, t, count, window):
            counted.append(t)
            counted.sort()
        else:
            ignored.append(t)
    # No window [s, s + window) holds more than `count` counted hits ...
    for start in counted:
        assert count_in_window(counted, start, window) <= count
    # ... and every ignored hit would have made some window hold one too many.
    for t in ignored:
        assert any(
            max(counted[i + count - 1], t) - min(counted[i], t) < window
            for i in range(len(counted) - count + 1)
        )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=10),
)
def test_limit_in_time_order_counts_the_last_window(times, count, window):
    counted: list[float] = []
    for t in sorted(times):
        recent = [h for h in counted if h > t - window]
        assert within_limit(counted, t, count, window) == (len(recent) < count)
        if len(recent) < count:
            counted.append(t)
