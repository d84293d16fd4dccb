"""What placing an event in the buyer journey costs, part by part (compiled when built).

.venv/bin/python -m bench.journey_parts
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from bench.engine_bench import parse_all
from bench.workload import generate
from scoring_service.intake import Event
from scoring_service.journey import advance, channel_of, compile_journey, content_of
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import JourneyState


def nanoseconds_each(events: Sequence[Event], run: Callable[[Sequence[Event]], Any]) -> int:
    """Best of 3 passes, per event."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        run(events)
        best = min(best, time.perf_counter() - started)
    return round(best / len(events) * 1e9)


def main() -> None:
    docs = generate(events=60_000, leads=3_000, anonymous_share=0.3)
    events = parse_all([orjson.dumps(d) for d in docs if not isinstance(d, bytes)], time.time())
    journey = starter_ruleset().journey
    assert journey is not None
    book = compile_journey(journey)
    with_context = [e for e in events if e.context]

    def place_all(batch: Sequence[Event]) -> None:
        states: dict[str, JourneyState] = {}
        moves: list[Any] = []
        for event in batch:
            state = states.setdefault(event.raw_id, JourneyState())
            advance(
                book,
                state,
                event,
                moves,
                lead_id=event.raw_id,
                traits={},
                account_traits=None,
                stage="lead",
                score=0.0,
                ruleset_version=1,
            )

    print("ns per event:")
    print("  placing (advance)       ", nanoseconds_each(events, place_all))
    print(
        "  channel, every event    ",
        nanoseconds_each(events, lambda b: [channel_of(book, e) for e in b]),
    )
    print(
        "  channel, with a context ",
        nanoseconds_each(with_context, lambda b: [channel_of(book, e) for e in b]),
    )
    print(
        "  content                 ", nanoseconds_each(events, lambda b: [content_of(e) for e in b])
    )
    print("  (the loop alone)        ", nanoseconds_each(events, lambda b: [None for _ in b]))


if __name__ == "__main__":
    main()
