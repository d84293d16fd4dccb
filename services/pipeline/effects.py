"""What a committed lead transaction keeps of what scoring decided, and what it publishes.

Policy, not storage: notifications get their owners (round robin per queue), transitions and
follow-up deadlines are stored (services/adapters/postgres/record_store.py has the SQL), and
every record becomes an outbox row by the one table of outputs (services/outputs.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from scoring_service.effects import Effects
from services.adapters.postgres import history_store, record_store
from services.adapters.postgres.db import Connection
from services.adapters.postgres.outbox_store import OutboxRow
from services.outputs import OUTPUTS
from services.settings import Settings
from stage_router.deliveries import record_seq


def outbox_rows(effects: Effects, settings: Settings) -> list[OutboxRow]:
    """Every record of `effects` as an outbox row, keyed and identified as the table says."""
    rows: list[OutboxRow] = []
    for output in OUTPUTS:
        records: Sequence[Mapping[str, Any]] = getattr(effects, output.effect)
        if not records:
            continue
        topic, key, record_id = output.topic(settings), output.key, output.record_id
        kind = output.effect
        rows.extend(
            OutboxRow(
                topic,
                r[key].encode(),
                orjson.dumps(r),
                r[record_id],
                kind=kind,
                subject=r[key],
                stage=r.get("to_stage") or r.get("stage"),
                type=r.get("type"),
                seq=record_seq(r[key], r[record_id]),
            )
            for r in records
        )
    return rows


async def record_effects(
    pg: Connection,
    effects: Effects,
    *,
    queues: Mapping[str, Sequence[str]],
    settings: Settings,
) -> list[OutboxRow]:
    """Keep what scoring decided: owners named, transitions and deadlines stored; returns
    the outbox rows to publish. Runs in the caller's transaction."""
    await record_store.assign_owners(
        pg, [*effects.notifications, *effects.account_notifications], queues
    )
    owners = {
        n["notification_id"].rsplit(":", 1)[0]: n["owner"]
        for n in effects.notifications
        if n["type"] == "promotion"
    }
    await record_store.save_transitions(pg, effects.transitions)
    await history_store.supersede_history(pg, effects.transitions)
    await record_store.save_handoffs(pg, effects.handoffs, owners)
    if effects.account_transitions:
        await record_store.save_account_transitions(pg, effects.account_transitions)
    await record_store.save_journey_moves(pg, effects.journey_moves)
    return outbox_rows(effects, settings)
