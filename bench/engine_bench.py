"""The pure engine alone: events per second on one core, for rule sets of growing size."""

from __future__ import annotations

import time
from typing import Any

import orjson

from schemas.ruleset import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.intake import Event, parse_event
from scoring_service.pipeline import Workspace, score_batch
from scoring_service.rules import compile_ruleset
from scoring_service.ruleset_files import starter_document
from services.runtime.main import tune_garbage_collector


def ruleset_with(total_rules: int) -> Engine:
    """The starter rules plus synthetic ones (pages, track events, fit traits) up to a size."""
    doc = starter_document().model_dump(mode="json", by_alias=True, exclude_none=True)
    n = 0
    while len(doc["rules"]) < total_rules:
        kind = n % 3
        if kind == 0:
            rule: dict[str, Any] = {
                "category": "engagement",
                "points": 2,
                "when": {"type": "page", "path": f"/section-{n}/*"},
            }
        elif kind == 1:
            rule = {
                "category": "engagement",
                "points": 3,
                "limit": {"count": 2, "window_days": 7},
                "when": {"type": "track", "event": f"Custom Event {n}"},
            }
        else:
            rule = {
                "category": "fit",
                "points": 1,
                "when": {"trait": f"custom.field_{n}", "equals": "yes"},
            }
        doc["rules"].append({"id": f"synthetic-{n}", **rule})
        n += 1
    return Engine(compile_ruleset(RuleSetDocument.model_validate(doc), 1))


def parse_all(raws: list[bytes], now: float) -> list[Event]:
    return [e for r in raws if isinstance(e := parse_event(r, now=now), Event)]


# The starter set as it ships, then grown with synthetic rules.
RULE_COUNTS = (len(starter_document().rules), 100, 500)


def measure(docs: list[Any], rule_counts: tuple[int, ...] = RULE_COUNTS) -> dict[str, Any]:
    """Parse throughput, and scoring throughput per rule-set size (best of 3 passes)."""
    raws = [d if isinstance(d, bytes) else orjson.dumps(d) for d in docs]
    now = time.time()
    tune_garbage_collector()  # as the service runs
    started = time.perf_counter()
    events = parse_all(raws, now)
    parse_seconds = time.perf_counter() - started
    results: dict[str, Any] = {
        "events": len(events),
        "parse_events_per_s": round(len(raws) / parse_seconds),
    }
    for count in rule_counts:
        engine = ruleset_with(count)
        best = float("inf")
        for _ in range(3):
            ws = Workspace()
            started = time.perf_counter()
            score_batch(ws, engine, events, now=now)
            best = min(best, time.perf_counter() - started)
        results[f"score_events_per_s_{count}_rules"] = round(len(events) / best)
        results[f"parse_and_score_events_per_s_{count}_rules"] = round(
            len(events) / (best + parse_seconds)
        )
    return results
