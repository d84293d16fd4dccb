"""The quarterly review's outcome report: how well a rule-set version's handoffs predicted
what sales did with them, computed from the rows services/adapters/postgres/review_store.py
reads (transitions, feedback, history).

The cohort: leads handed to sales under the version in the window, that is, whose first
move past `lead` (to `mql`, or straight to `sal` and beyond on a trigger such as a demo
request) was made by that version in [since, until). Their outcomes are sales feedback
applied at or after the handoff, whenever it came. "Qualified" leads for precision and
recall are those sales marked qualified in the window, whether or not they were handed off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from services.adapters.postgres import review_store
from services.adapters.postgres.db import Connection
from stage_router.lifecycle import FUNNEL

OUTCOMES = ("accepted", "qualified", "converted", "won", "lost")
# Fixed score bands at handoff: [low, high) with the last open-ended.
BANDS = (0.0, 25.0, 50.0, 75.0, 100.0, 150.0)
PAST_LEAD = FUNNEL

# (good outcome, the bad one) a proposal can learn from.
TARGETS = {"won": ("won", "lost"), "qualified": ("qualified", "rejected")}
MAX_SAMPLES = 200_000


async def outcome_samples(
    pg: Connection,
    since: datetime,
    until: datetime,
    version: int,
    target: str,
    *,
    score: str | None = None,
) -> list[tuple[str, bool, dict[str, float]]]:
    """(lead, good outcome?, hits per rule) for each lead `version` handed off in the window
    that sales decided on (won or lost; or qualified or rejected); with `score`, only the
    leads that score qualified."""
    good, bad = TARGETS[target]
    rows = await review_store.outcome_samples(
        pg,
        since,
        until,
        version,
        past_lead=list(PAST_LEAD),
        decided=[good, bad],
        good=good,
        limit=MAX_SAMPLES,
        score=score,
    )
    return [(r["lead_id"], bool(r["good"]), orjson.loads(r["hits"])) for r in rows]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def review_report(
    pg: Connection,
    since: datetime,
    until: datetime,
    version: int,
    *,
    challenger: bool = False,
) -> dict[str, Any]:
    """The report for `version`; with `challenger`, computed on the stages the challenger
    gave the same leads (its own transitions and hits), not the live ones."""
    read = await review_store.review_rows(
        pg,
        since,
        until,
        version,
        past_lead=list(PAST_LEAD),
        outcomes=list(OUTCOMES),
        bands=list(BANDS),
        challenger=challenger,
    )
    precision = read.precision
    handed_off = int(precision["handed_off"])
    outcome_rows = {r["outcome"]: r for r in read.outcomes}
    outcomes = {
        outcome: {
            "leads": int(row["leads"]) if row else 0,
            "share": _ratio(int(row["leads"]) if row else 0, handed_off),
            "median_seconds": (
                round(float(row["median_seconds"]), 3)
                if row and row["median_seconds"] is not None
                else None
            ),
        }
        for outcome in OUTCOMES
        for row in [outcome_rows.get(outcome)]
    }
    bands: dict[str, list[dict[str, Any]]] = {"deciles": [], "fixed": []}
    for row in read.bands:
        leads = int(row["leads"])
        figures = {
            "leads": leads,
            "qualified_share": _ratio(int(row["qualified"]), leads),
            "won_share": _ratio(int(row["won"]), leads),
        }
        if row["kind"] == "decile":
            bands["deciles"].append(
                {"decile": row["n"], "low": row["low"], "high": row["high"], **figures}
            )
        else:
            index = int(row["n"])  # width_bucket: 1 is [BANDS[0], BANDS[1]), 0 below them
            low = BANDS[index - 1] if index >= 1 else None
            high = BANDS[index] if index < len(BANDS) else None
            bands["fixed"].append({"from": low, "to": high, **figures})
    bands["deciles"].sort(key=lambda b: b["decile"])
    bands["fixed"].sort(key=lambda b: -1.0 if b["from"] is None else b["from"])
    rules = []
    for row in read.rules:
        won_with, lost_with = int(row["won_with"]), int(row["lost_with"])
        won_all, lost_all = int(row["won_all"]), int(row["lost_all"])
        base = won_all / (won_all + lost_all) if won_all + lost_all else None
        with_rule = won_with / (won_with + lost_with) if won_with + lost_with else None
        rules.append(
            {
                "rule_id": row["rule_id"],
                "won_leads_hit": won_with,
                "lost_leads_hit": lost_with,
                "won_share_hit": _ratio(won_with, won_all),
                "lost_share_hit": _ratio(lost_with, lost_all),
                # How much likelier a lead that hit the rule was won than any decided lead.
                "lift": round(with_rule / base, 4) if with_rule is not None and base else None,
            }
        )
    rules.sort(key=lambda r: (-(r["lift"] or 0.0), r["rule_id"]))
    qualified, both = int(precision["qualified"]), int(precision["both"])
    won_handed_off = int(outcomes["won"]["leads"] or 0)
    by_score: dict[str, dict[str, Any]] = {}
    for row in read.scores:
        entry = by_score.setdefault(
            row["score"], {"handed_off": 0, "qualified": 0, "won": 0, "fixed": []}
        )
        leads, row_qualified, won = int(row["leads"]), int(row["qualified"]), int(row["won"])
        entry["handed_off"] += leads
        entry["qualified"] += row_qualified
        entry["won"] += won
        index = int(row["band"]) if row["band"] is not None else 0
        entry["fixed"].append(
            {
                "from": BANDS[index - 1] if index >= 1 else None,
                "to": BANDS[index] if index < len(BANDS) else None,
                "leads": leads,
                "qualified_share": _ratio(row_qualified, leads),
                "won_share": _ratio(won, leads),
            }
        )
    base = won_handed_off / handed_off if handed_off else None
    for entry in by_score.values():
        entry["fixed"].sort(key=lambda b: -1.0 if b["from"] is None else b["from"])
        entry["precision"] = _ratio(entry["qualified"], entry["handed_off"])
        entry["recall"] = _ratio(entry["qualified"], qualified)
        won_share = entry["won"] / entry["handed_off"] if entry["handed_off"] else None
        # How much likelier a lead this score handed off was won than any lead handed off.
        entry["lift"] = round(won_share / base, 4) if won_share is not None and base else None
    accounts = read.accounts
    mqa, account_qualified = int(accounts["mqa"]), int(accounts["sales_qualified"])
    account_both = int(accounts["both"])
    return {
        "version": version,
        "scored_by": "challenger" if challenger else "live",
        "since": since,
        "until": until,
        "handed_off": handed_off,
        "outcomes": outcomes,
        "score_bands": bands,
        "by_score": dict(sorted(by_score.items())),
        "rules": rules,
        "mql_definition": {
            "handed_off": handed_off,
            "sales_qualified": qualified,
            "qualified_and_handed_off": both,
            "missed": qualified - both,
            "precision": _ratio(both, handed_off),
            "recall": _ratio(both, qualified),
        },
        "accounts": {
            "mqa": mqa,
            "outcomes": {
                outcome: {
                    "accounts": int(accounts[outcome]),
                    "share": _ratio(int(accounts[outcome]), mqa),
                }
                for outcome in ("qualified", "won", "lost")
            },
            "sales_qualified": account_qualified,
            "qualified_and_mqa": account_both,
            "missed": account_qualified - account_both,
            "precision": _ratio(account_both, mqa),
            "recall": _ratio(account_both, account_qualified),
        },
    }


async def decided_leads(
    pg: Connection, since: datetime, until: datetime, version: int, target: str
) -> list[tuple[str, datetime, bool]]:
    """(lead, handoff time, good outcome?) for each lead `version` handed off in the window
    that sales decided on, oldest handoff first: what a learned score trains on."""
    good, bad = TARGETS[target]
    rows = await review_store.decided_leads(
        pg,
        since,
        until,
        version,
        past_lead=list(PAST_LEAD),
        decided=[good, bad],
        good=good,
        limit=MAX_SAMPLES,
    )
    return [(r["lead_id"], r["handed_at"], bool(r["good"])) for r in rows]
