"""A learned score against the starter rules, on a generated history with planted outcomes
(`make model-demo`).

Four months of generated traffic are scored by the starter rules in memory (the pure engine,
as a replay). Each lead the rules hand to sales is a sample: its features as they stood at
that moment (scoring_service/model_score.py), the rules' own score then, and an outcome
drawn with the weights `make review-demo` plants (webinars and email replies matter, pricing
visits do not, the careers page hurts, decision-makers are likelier buyers). A model is
trained on the older 80% of handoffs and judged on the most recent 20%
(scoring_service/training.py). Printed and saved under bench/results/model_demo.json:

- AUC on the held-out handoffs of the model and of the rules' score;
- the calibration by decile and its largest error where a decile holds >= 100 leads;
- conversion by grade band and the top two bands' share of conversions;
- each planted feature's learned direction against the planted one;
- seconds to replay the history, and to train; and the time training takes as the
  service does it (`leadscore train`: each decided lead's history replayed to its
  handoff, then the fit; target < 60 s on 1,000,000 events).

    .venv/bin/python -m bench.model_demo [--events 1000000] [--leads 60000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.review_demo import INTERCEPT, PLANTED
from bench.workload import generate
from scoring_service.engine import Engine
from scoring_service.intake import Event, parse_event
from scoring_service.model_score import features_of
from scoring_service.pipeline import Workspace, score_event
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.state import HITS
from scoring_service.training import Report, Sample, replay_chunks, samples_at_handoffs, train
from services.app.learned_scores import HISTORY_CHUNK
from services.runtime.main import tune_garbage_collector

RESULTS = Path(__file__).parent / "results"
DAYS = 120
HANDED_OFF = ("mql", "sal", "sql")


def planted_outcome(hits: dict[str, float], fit: list[str], rnd: random.Random) -> bool:
    """Won or not, by the review demo's planted weights (hits capped at 5, as there)."""
    logit = INTERCEPT + sum(PLANTED.get(r, 0.0) * min(n, 5) for r, n in hits.items())
    logit += sum(PLANTED.get(r, 0.0) for r in fit)
    return rnd.random() < 1 / (1 + math.exp(-logit))


def handoffs(
    events: int, leads: int, seed: int
) -> tuple[list[Sample], float, int, dict[str, list[Event]], Workspace]:
    """Every lead's first handoff as a sample; the seconds the replay took; events scored;
    each lead's own events (what the service keeps as its history); the leads and
    accounts at the end."""
    now = time.time()
    parsed = [
        e
        for doc in generate(
            events=events, leads=leads, seed=seed, days=DAYS, recent=True, anonymous_share=0.3
        )
        if isinstance(
            e := parse_event(doc if isinstance(doc, bytes) else orjson.dumps(doc), now=now), Event
        )
    ]
    parsed.sort(key=lambda e: e.ts)
    engine = Engine(starter_ruleset(), account_features=True)
    ws = Workspace()
    rnd = random.Random(seed)
    samples: list[Sample] = []
    seen: set[str] = set()
    started = time.perf_counter()
    history: dict[str, list[Event]] = {}
    for event in parsed:
        scored = score_event(ws, engine, event, now=now)
        history.setdefault(scored.lead_id, []).append(event)
        for move in scored.effects.transitions:
            lead_id = move["lead_id"]
            if move["to_stage"] not in HANDED_OFF or lead_id in seen:
                continue
            seen.add(lead_id)
            state = ws.leads[lead_id]
            hits = {rule: signal[HITS] for rule, signal in state.signals.items()}
            samples.append(
                Sample(
                    lead_id=lead_id,
                    at=event.ts,
                    features=features_of(state, engine.rules),
                    good=planted_outcome(hits, list(state.fit_rules), rnd),
                    rules_score=state.fit + state.engagement,
                )
            )
    # The service moves a merged lead's history to the lead it joined: so here.
    kept: dict[str, list[Event]] = {}
    for lead_id, events_of_lead in history.items():
        kept.setdefault(ws.canonical(lead_id), []).extend(events_of_lead)
    return samples, time.perf_counter() - started, len(parsed), kept, ws


def train_from_history(
    samples: list[Sample], history: dict[str, list[Event]], ws: Workspace
) -> tuple[float, float, Report]:
    """What `leadscore train` does once it reads the history (services/app/learned_scores.py):
    the decided leads with their accounts' members, in pieces of HISTORY_CHUNK leads, each
    piece replayed to its handoffs; then the fit. Returns the seconds of each, and the
    report."""
    engine = Engine(starter_ruleset(), account_features=True)
    started = time.perf_counter()
    pieces = replay_chunks(
        [(s.lead_id, s.at, s.good) for s in samples],
        {lead_id: state.account_id for lead_id, state in ws.leads.items()},
        {account_id: list(account.members) for account_id, account in ws.accounts.items()},
        HISTORY_CHUNK,
    )
    replayed: list[Sample] = []
    for lead_ids, handed in pieces:
        events = [event for lead_id in lead_ids for event in history.get(lead_id, [])]
        replayed += samples_at_handoffs(engine, events, handed)
    replay_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, report = train(replayed, now=datetime.now(UTC))
    return replay_seconds, time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    tune_garbage_collector()  # as the service runs
    samples, replay_seconds, scored, history, ws = handoffs(args.events, args.leads, args.seed)
    started = time.perf_counter()
    model, report = train(samples, now=datetime.now(UTC))
    train_seconds = time.perf_counter() - started
    lead_replay_seconds, lead_train_seconds, from_history = train_from_history(samples, history, ws)
    training_seconds = lead_replay_seconds + lead_train_seconds
    learned = {f.name: f.weight / f.scale for f in model.features}
    directions = {
        name: {
            "planted": weight,
            "learned_per_unit": round(
                learned.get(f"rule:{name}", learned.get(f"fit:{name}", 0)), 4
            ),
        }
        for name, weight in PLANTED.items()
    }
    result = {
        "events": scored,
        "handoffs": len(samples),
        "replay_seconds": round(replay_seconds, 1),
        "train_seconds": round(train_seconds, 2),
        # As the service trains: the decided leads' histories replayed, then the fit.
        "training_from_history": {
            "seconds": round(training_seconds, 1),
            "replay_seconds": round(lead_replay_seconds, 1),
            "fit_seconds": round(lead_train_seconds, 2),
            "auc": from_history.auc,
            "auc_rules": from_history.auc_rules,
        },
        "features": len(model.features),
        "directions": directions,
        **report.to_dict(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_demo.json").write_text(json.dumps(result, indent=2))
    print(f"{scored:,} events replayed in {replay_seconds:.1f} s; {len(samples):,} handoffs")
    print(
        f"trained on {report.trained_on:,}, judged on the latest {report.held_out:,}: "
        f"{train_seconds:.2f} s"
    )
    print(f"AUC: model {report.auc}, starter rules {report.auc_rules}; log loss {report.log_loss}")
    print(
        f"as `leadscore train` does it (decided leads and their accounts replayed, "
        f"then trained): {training_seconds:.1f} s ({lead_replay_seconds:.1f} s replay, "
        f"{lead_train_seconds:.2f} s fit); AUC {from_history.auc} (rules {from_history.auc_rules})"
    )
    print(f"calibration error (deciles of >= 100 leads): {report.calibration_error}")
    for row in report.calibration:
        print(
            f"  decile {row['decile']:>2}: {row['leads']:>5} leads, predicted "
            f"{row['predicted']:.3f}, observed {row['observed']:.3f}"
        )
    for band, row in report.bands.items():
        print(
            f"  band {band}: {row['leads']:>5} leads, {row['conversions']:>5} won "
            f"({row['rate']:.1%})"
        )
    print(
        f"top two bands: {report.top_bands_share_of_leads:.0%} of leads, "
        f"{report.top_bands_share_of_conversions:.0%} of conversions"
    )
    for name, row in directions.items():
        print(f"  {name:<18} planted {row['planted']:+.1f}, learned {row['learned_per_unit']:+.3f}")


if __name__ == "__main__":
    main()
