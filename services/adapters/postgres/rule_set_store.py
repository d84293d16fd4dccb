"""Stored rule-set versions: publishing, activation, reading the active one."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from schemas.rule_set import RuleSetDocument
from scoring_service.rule_set_files import starter_document, starter_text
from scoring_service.rules import CompiledRuleSet, compile_ruleset

log = logging.getLogger(__name__)
# Batches hold it shared while scoring; activation holds it exclusively to switch versions.
RULESET_LOCK = 0x1EAD5E7


async def publish(
    pg: asyncpg.Connection,
    document: RuleSetDocument,
    *,
    by: str,
    comment: str | None = None,
    source: str | None = None,
) -> int:
    """Store a new immutable version (N + 1) and return its number; `source` is the text
    the author published (comments and all), `document` what it means."""
    return int(
        await pg.fetchval(
            "INSERT INTO rulesets (version, name, document, published_by, comment, source) "
            "SELECT coalesce(max(version), 0) + 1, $1, $2::jsonb, $3, $4, $5 FROM rulesets "
            "RETURNING version",
            document.name,
            orjson.dumps(document.model_dump(mode="json", by_alias=True)).decode(),
            by,
            comment,
            source,
        )
    )


async def activate(pg: asyncpg.Connection, version: int, *, by: str) -> None:
    """Make `version` the live one. Run inside a transaction: the lock waits for batches in
    flight and is held until the switch commits."""
    await lock_exclusively(pg)
    await pg.execute(
        "INSERT INTO active_ruleset (id, version, activated_by) VALUES (1, $1, $2) "
        "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, "
        "activated_by = EXCLUDED.activated_by, activated_at = now()",
        version,
        by,
    )


async def ensure_starter(pg: asyncpg.Connection) -> None:
    """A fresh install publishes and activates the starter rule set as version 1."""
    async with pg.transaction():
        # Serialise instances starting together on an empty database.
        await pg.execute("LOCK TABLE rulesets IN EXCLUSIVE MODE")
        if await pg.fetchval("SELECT count(*) FROM rulesets"):
            return
        version = await publish(
            pg, starter_document(), by="leadscore", comment="starter rules", source=starter_text()
        )
        await activate(pg, version, by="leadscore")
        log.info("published and activated the starter rule set as version %d", version)


async def lock_exclusively(pg: asyncpg.Connection) -> None:
    """The rule-set lock, exclusively, until the transaction ends: batches in flight finish
    first, and every batch after the commit sees what this transaction changed."""
    await pg.execute("SELECT pg_advisory_xact_lock($1)", RULESET_LOCK)


async def versions_in_use(pg: asyncpg.Connection) -> tuple[int | None, int | None]:
    """The active version and the challenger's (None where there is none), under the rule-set
    lock shared: step 1 of the lock order (services/pipeline/lead_transaction.py)."""
    row = await pg.fetchrow(
        "SELECT (SELECT version FROM active_ruleset WHERE id = 1) AS active, "
        "(SELECT version FROM challenger WHERE id = 1) AS challenger "
        "FROM pg_advisory_xact_lock_shared($1)",
        RULESET_LOCK,
    )
    if row is None:
        return None, None
    return row["active"], row["challenger"]


async def active_version(pg: asyncpg.Connection) -> int | None:
    value = await pg.fetchval("SELECT version FROM active_ruleset WHERE id = 1")
    return int(value) if value is not None else None


class VersionUnusable(Exception):
    """A stored version that cannot be read or compiled into rules (stored before a check
    that now refuses it, or changed in the database by hand): scoring with it is impossible,
    whatever the events. Raised in place of the validation or compilation error."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(f"rule-set version {version} cannot run: {reason}")
        self.version = version
        self.reason = reason


async def load_version(pg: asyncpg.Connection, version: int) -> CompiledRuleSet:
    text = await pg.fetchval("SELECT document::text FROM rulesets WHERE version = $1", version)
    if text is None:
        raise LookupError(f"rule set version {version} does not exist")
    try:
        return compile_ruleset(RuleSetDocument.model_validate(orjson.loads(text)), version)
    except Exception as exc:  # whatever the document holds, it is the version's fault
        raise VersionUnusable(version, f"{type(exc).__name__}: {exc}"[:500]) from exc


async def record_audit(
    pg: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    target: str | None,
    detail: dict[str, Any] | None,
) -> None:
    """Append to the audit log, in the caller's transaction (with the change it records)."""
    await pg.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4::jsonb)",
        actor,
        action,
        target,
        orjson.dumps(detail).decode() if detail is not None else None,
    )


async def claim_scheduled(
    pg: asyncpg.Connection, *, action: str, every_seconds: float, actor: str
) -> datetime | None:
    """Record in the audit log that a scheduled `action` starts now, unless one started
    less than `every_seconds` ago; returns when the next one is due in that case (None:
    claimed). An advisory lock on the action makes instances take turns, so one claims."""
    async with pg.transaction():
        await pg.execute("SELECT pg_advisory_xact_lock(hashtext($1))", action)
        due: datetime | None = await pg.fetchval(
            "SELECT max(at) + make_interval(secs => $2) FROM audit_log WHERE action = $1 "
            "HAVING max(at) + make_interval(secs => $2) > now()",
            action,
            every_seconds,
        )
        if due is not None:
            return due
        await record_audit(pg, actor=actor, action=action, target=None, detail=None)
        return None
