"""The pure engine alone: events per second on one core, for rule sets of growing size."""

from __future__ import annotations

import gc
import random
import statistics
import time
from typing import Any

import orjson

from bench import instructions
from schemas.rule_set import RuleSetDocument
from scoring_service.engine import Engine
from scoring_service.intake import Event, parse_event
from scoring_service.pipeline import Workspace, score_batch
from scoring_service.rule_set_files import starter_document
from scoring_service.rules import compile_ruleset
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


def one_score_document() -> RuleSetDocument:
    """The starter set with one score: its second line's own rules, scores and grades
    taken out, the shared rules counting for the default score alone (the starter set as it
    was before it had two lines). Against it, what a second score costs."""
    doc = starter_document().model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["rules"] = default_only(doc["rules"])
    if doc.get("accounts"):
        doc["accounts"]["fit"] = default_only(doc["accounts"].get("fit", []))
    for key in ("scores", "grades", "qualify"):
        doc.pop(key, None)
    return RuleSetDocument.model_validate(doc)


def no_journey_document() -> RuleSetDocument:
    """The starter set without its buyer journey: against it, what placing every event in
    the journey (phases, channels, accounts) costs."""
    doc = starter_document().model_dump(mode="json", by_alias=True, exclude_none=True)
    doc.pop("journey", None)
    return RuleSetDocument.model_validate(doc)


def with_model_document() -> RuleSetDocument:
    """The starter set with a learned score beside its rules: a model reading every rule,
    each buyer-journey phase, the lead's tenure and its account's coverage and score
    (seeded weights: what it costs does not depend on what it learned). Its thresholds are
    out of reach and qualification stays the rules', so both engines move the same leads
    and make the same records: the difference is the cost of scoring the model on every
    event."""
    document = starter_document()
    doc = document.model_dump(mode="json", by_alias=True, exclude_none=True)
    rnd = random.Random(44)
    features = [
        {
            "name": f"{'rule' if r.category == 'engagement' else 'fit'}:{r.id}",
            "weight": rnd.uniform(-1, 1),
            "mean": 0.5,
        }
        for r in document.rules
    ]
    phases = [p.id for p in document.journey.phases] if document.journey else []
    features += [{"name": f"journey:{p}", "weight": rnd.uniform(-1, 1)} for p in phases]
    features.append({"name": "tenure_days", "weight": 0.01, "mean": 3.0, "scale": 5.0})
    features.append({"name": "account:coverage", "weight": 0.2, "mean": 10.0, "scale": 10.0})
    features.append({"name": "account:score", "weight": 0.3, "mean": 40.0, "scale": 30.0})
    doc["scores"]["likelihood"] = {
        "thresholds": {"mql": 100, "sal": 100},
        "model": {"intercept": -1.0, "features": features},
    }
    return RuleSetDocument.model_validate(doc)


def default_only(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules that count for the default score, without naming it."""
    return [
        {k: v for k, v in rule.items() if k != "scores"}
        for rule in rules
        if "default" in rule.get("scores", ["default"])
    ]


def parse_all(raws: list[bytes], now: float) -> list[Event]:
    return [e for r in raws if isinstance(e := parse_event(r, now=now), Event)]


# Passes of each engine in a cost comparison: the median of seven pairs moves by about 1%
# from run to run here, the best of three by up to 5%.
PAIRS = 7

# The starter set as it ships, then grown with synthetic rules.
RULE_COUNTS = (len(starter_document().rules), 100, 500)


def measure(docs: list[Any], rule_counts: tuple[int, ...] = RULE_COUNTS) -> dict[str, Any]:
    """Parse throughput; scoring throughput per rule-set size (best of 3 passes); what a
    second score, the buyer journey and a learned score cost (the median ratio of PAIRS
    pairs of passes, and for the learned score the instructions too)."""
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

    def one_pass(engine: Engine) -> float:
        """CPU seconds of this process for one pass over the events: time the machine gave
        to other processes does not count (it still moves by a few percent)."""
        # The last pass's leads are garbage now: collected here, not inside this pass's
        # timing, where they would land on whichever engine comes next.
        gc.collect()
        ws = Workspace()
        started = time.process_time()
        score_batch(ws, engine, events, now=now)
        return time.process_time() - started

    def best_of_3(engine: Engine) -> float:
        return min(one_pass(engine) for _ in range(3))

    def paired(base: Engine, variant: Engine, pairs: int = PAIRS) -> tuple[float, float, float]:
        """(base's best, variant's best, the median of the pairs' ratios): passes in turn,
        the variant first in every other pair, so a slow spell of the machine lands on a
        pair rather than on one engine."""
        ratios: list[float] = []
        best_base = best_variant = float("inf")
        for n in range(pairs):
            if n % 2:
                b = one_pass(base)
                v = one_pass(variant)
            else:
                v = one_pass(variant)
                b = one_pass(base)
            ratios.append(v / b)
            best_base, best_variant = min(best_base, b), min(best_variant, v)
        return best_base, best_variant, statistics.median(ratios)

    for count in rule_counts:
        best = best_of_3(ruleset_with(count))
        results[f"score_events_per_s_{count}_rules"] = round(len(events) / best)
        results[f"parse_and_score_events_per_s_{count}_rules"] = round(
            len(events) / (best + parse_seconds)
        )
    starter = ruleset_with(0)
    # Two scores (the starter set) against one.
    one_s, two_s, factor = paired(Engine(compile_ruleset(one_score_document(), 1)), starter)
    results["score_events_per_s_one_score"] = round(len(events) / one_s)
    results["score_events_per_s_two_scores"] = round(len(events) / two_s)
    # Seconds per event with two scores over seconds per event with one (target <= 1.2).
    results["two_scores_cost_factor"] = round(factor, 3)
    # The buyer journey: the starter set without it against it as it ships.
    without_s, with_s, factor = paired(Engine(compile_ruleset(no_journey_document(), 1)), starter)
    results["score_events_per_s_without_journey"] = round(len(events) / without_s)
    results["score_events_per_s_with_journey"] = round(len(events) / with_s)
    # Seconds per event with the journey over seconds without (target <= 1.15).
    results["journey_cost_factor"] = round(factor, 3)
    # A learned score beside the starter's rules, against the starter set.
    _, model_s, factor = paired(starter, Engine(compile_ruleset(with_model_document(), 1)))
    results["score_events_per_s_with_model"] = round(len(events) / model_s)
    # Seconds per event with the model score over seconds without (target <= 1.1).
    results["model_cost_factor"] = round(factor, 3)
    # The same, counted in instructions: the same figure every run (bench/instructions.py).
    results.update(instructions.count())
    return results
