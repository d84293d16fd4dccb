"""The active rule set's compiled engine, cached per process and checked in every writer's
transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg

from scoring_service.engine import Engine
from services.adapters.postgres.rulesets import RULESET_LOCK, active_version, load_version

log = logging.getLogger(__name__)


class NoActiveRuleSet(RuntimeError):
    """Nothing is active (a database that was never started by `ensure_starter`)."""


class ActiveRules:
    """The active rule set, one object per process, shared by every writer (consumers,
    deadline watcher, feedback over HTTP, jobs) and by the reads that explain a score.

    The compiled engine is cached and rebuilt only when another version became active, on
    any instance: each writer asks inside its own transaction, under the shared lock.
    """

    def __init__(self, on_change: Callable[[int], None] = lambda version: None) -> None:
        self._engine: Engine | None = None
        self._challenger: Engine | None = None
        self._on_change = on_change

    async def engine(self, pg: asyncpg.Connection) -> Engine:
        """The engine for the active version; run inside the caller's transaction.

        Step 1 of the lock order (services/pipeline/lead_transaction.py): the shared lock pairs with
        the exclusive one that activation takes, so a transaction that started before an
        activation finishes under the old version, and every one that starts after it uses
        the new one, on every instance, at once.
        """
        return (await self.engines(pg))[0]

    async def engines(self, pg: asyncpg.Connection) -> tuple[Engine, Engine | None]:
        """The active engine and the challenger's, if one runs; as `engine`, under the
        shared lock (starting or stopping a challenger takes it exclusively too)."""
        row = await pg.fetchrow(
            "SELECT (SELECT version FROM active_ruleset WHERE id = 1) AS active, "
            "(SELECT version FROM challenger WHERE id = 1) AS challenger "
            "FROM pg_advisory_xact_lock_shared($1)",
            RULESET_LOCK,
        )
        if row is None or row["active"] is None:
            raise NoActiveRuleSet("no active rule set")
        active = await self.engine_for(pg, int(row["active"]))
        if row["challenger"] is None:
            return active, None
        challenger = self._challenger
        if challenger is None or challenger.rules.version != row["challenger"]:
            challenger = self._challenger = Engine(await load_version(pg, int(row["challenger"])))
        return active, challenger

    async def engine_for(self, pg: asyncpg.Connection, version: int) -> Engine:
        """The engine of `version`: the cached one when it is that version (reads that
        explain a stored score use the version that scored it)."""
        engine = self._engine
        if engine is not None and engine.rules.version == version:
            return engine
        compiled = Engine(await load_version(pg, version))
        if await active_version(pg) == version:
            self._engine = compiled
            self._on_change(version)
            log.info("scoring with rule set version %d", version)
        return compiled

    @property
    def cached(self) -> Engine | None:
        """The engine last used by a writer, if any (no database round trip)."""
        return self._engine
