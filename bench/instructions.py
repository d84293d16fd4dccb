"""Instructions per event, counted by valgrind's callgrind: the starter set, and the
engine with a learned score beside it, without the buyer journey, and with one score, on
the same events.

Timing two engines on a shared two-core machine moves by 5% from pass to pass, as much as
the difference a learned score makes. An instruction count is the same for the same
binary, events and hash seed whatever else runs, so it says what a change costs to a
tenth of a percent (docs/performance/index.md). It is not time: a cache miss counts as one
instruction. `make bench` reports both.

    python -m bench.instructions          # every engine, two at a time (one core each)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

# Enough events for every kind of record (notifications are 2% of events), few enough that
# callgrind (about 50x slower than native) takes a minute.
EVENTS = 30_000
ENGINES = ("starter", "learned", "without_journey", "one_score")


def _engine(name: str) -> Any:
    from bench.engine_bench import (
        no_journey_document,
        one_score_document,
        ruleset_with,
        with_model_document,
    )
    from scoring_service.engine import Engine
    from scoring_service.rules import compile_ruleset

    documents = {
        "learned": with_model_document,
        "without_journey": no_journey_document,
        "one_score": one_score_document,
    }
    if name == "starter":
        return ruleset_with(0)
    return Engine(compile_ruleset(documents[name](), 1))


def child(name: str, events: int) -> None:
    """Score the workload with callgrind's counting switched on around the batch only, so
    generating and parsing the events count for nothing."""
    import orjson

    from bench.engine_bench import parse_all
    from bench.workload import START, generate
    from scoring_service.pipeline import Workspace, score_batch
    from services.runtime.main import tune_garbage_collector

    docs = generate(
        events=events,
        leads=events // 10,
        seed=7,
        anonymous_share=0.3,
        duplicate_share=0.03,
        malformed_share=0.01,
        accounts=events // 100,
    )
    now = (START + timedelta(days=61)).timestamp()  # after every event, the same every run
    tune_garbage_collector()  # as the service runs
    parsed = parse_all([d if isinstance(d, bytes) else orjson.dumps(d) for d in docs], now)
    engine = _engine(name)
    gc.collect()
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
    score_batch(Workspace(), engine, parsed, now=now)
    subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    print(json.dumps({"events": len(parsed)}))


def count(events: int = EVENTS) -> dict[str, Any]:
    """Every engine counted, two processes at a time; {} when valgrind is not installed
    (`make bench-tools` installs it)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {}
    per_event: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in (ENGINES[:2], ENGINES[2:]):
            runs = {name: _counted(name, events, Path(tmp)) for name in pair}
            for name, run in runs.items():
                out, err = run.communicate(timeout=1800)
                collected = re.search(r"Collected : (\d+)", err)
                if run.returncode != 0 or collected is None:
                    raise RuntimeError(f"callgrind run of the {name} engine failed:\n{err[-2000:]}")
                scored = json.loads(out.strip().splitlines()[-1])["events"]
                per_event[name] = int(collected.group(1)) / scored
    starter = per_event["starter"]
    return {
        "instructions_per_event_starter": round(starter),
        "instructions_per_event_with_model": round(per_event["learned"]),
        "instructions_per_event_without_journey": round(per_event["without_journey"]),
        "instructions_per_event_one_score": round(per_event["one_score"]),
        # The same ratios as the timed ones, counted (targets 1.1, 1.15 and 1.2).
        "model_cost_factor_instructions": round(per_event["learned"] / starter, 4),
        "journey_cost_factor_instructions": round(starter / per_event["without_journey"], 4),
        "two_scores_cost_factor_instructions": round(starter / per_event["one_score"], 4),
    }


def _counted(name: str, events: int, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={folder / name}.out",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            name,
            "--events",
            str(events),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # dict and set order: the same every run
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=EVENTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.events)
        return
    result = count(args.events)
    print(json.dumps(result or {"skipped": "valgrind is not installed (make tools)"}, indent=2))


if __name__ == "__main__":
    main()
