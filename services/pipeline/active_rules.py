"""The active rule set's compiled engine, cached per process and checked in every writer's
transaction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from scoring_service.engine import Engine
from scoring_service.rules import CompiledRuleSet
from scoring_service.simulation import check_runs
from services.adapters.postgres import rule_set_store
from services.adapters.postgres.db import Connection
from services.adapters.postgres.rule_set_store import (
    VersionUnusable,
    active_version,
    load_version,
)

log = logging.getLogger(__name__)


class NoActiveRuleSet(RuntimeError):
    """Nothing is active (a database that was never started by `ensure_starter`)."""


class ActiveRules:
    """The active rule set, one object per process, shared by every writer (consumers,
    deadline watcher, feedback over HTTP, jobs) and by the reads that explain a score.

    The compiled engine is cached and rebuilt only when another version became active, on
    any instance: each writer asks inside its own transaction, under the shared lock.
    """

    def __init__(
        self,
        on_change: Callable[[int], None] = lambda version: None,
        on_unusable: Callable[[bool], None] = lambda unusable: None,
    ) -> None:
        self._engine: Engine | None = None
        self._challenger: Engine | None = None
        self._on_change = on_change
        self._on_unusable = on_unusable
        # Why the active version cannot run, while it cannot (readiness shows it; every
        # writer waits, events stay unconsumed, until an admin activates another version).
        self.unusable: VersionUnusable | None = None
        self._challenger_unusable: int | None = None

    async def engine(self, pg: Connection) -> Engine:
        """The engine for the active version; run inside the caller's transaction.

        Step 1 of the lock order (services/pipeline/lead_transaction.py): the shared lock pairs with
        the exclusive one that activation takes, so a transaction that started before an
        activation finishes under the old version, and every one that starts after it uses
        the new one, on every instance, at once.
        """
        return (await self.engines(pg))[0]

    async def engines(self, pg: Connection) -> tuple[Engine, Engine | None]:
        """The active engine and the challenger's, if one runs; as `engine`, under the
        shared lock (starting or stopping a challenger takes it exclusively too)."""
        active_version, challenger_version = await rule_set_store.versions_in_use(pg)
        if active_version is None:
            raise NoActiveRuleSet("no active rule set")
        active = await self._active_engine(pg, active_version)
        if challenger_version is None:
            return active, None
        challenger = self._challenger
        if challenger_version == self._challenger_unusable:
            return active, None
        if challenger is None or challenger.rules.version != challenger_version:
            try:
                challenger = self._challenger = runnable(await load_version(pg, challenger_version))
            except VersionUnusable as exc:
                # The challenger only shadows: live scoring goes on without it.
                log.error("%s; the challenger is not run", exc)
                self._challenger_unusable = exc.version
                return active, None
        return active, challenger

    async def _active_engine(self, pg: Connection, version: int) -> Engine:
        """The active version's engine, or VersionUnusable (remembered, so that a version
        that cannot run is not compiled again for every batch that waits for it)."""
        known = self.unusable
        if known is not None and known.version == version:
            # A new exception each time: raising one object again and again would grow its
            # traceback for as long as the outage lasts.
            raise VersionUnusable(known.version, known.reason)
        try:
            engine = await self.engine_for(pg, version)
        except VersionUnusable as exc:
            if self.unusable is None or self.unusable.version != exc.version:
                log.critical("%s; events wait unconsumed until another version is activated", exc)
            self.unusable = exc
            self._on_unusable(True)
            raise
        if self.unusable is not None:
            log.warning("scoring again: version %d is active and runs", version)
            self.unusable = None
            self._on_unusable(False)
        return engine

    async def engine_for(self, pg: Connection, version: int) -> Engine:
        """The engine of `version`: the cached one when it is that version (reads that
        explain a stored score use the version that scored it)."""
        engine = self._engine
        if engine is not None and engine.rules.version == version:
            return engine
        compiled = runnable(await load_version(pg, version))
        if await active_version(pg) == version:
            self._engine = compiled
            self._on_change(version)
            log.info("scoring with rule set version %d", version)
        return compiled

    async def check(self, pg: Connection, version: int) -> None:
        """Raise VersionUnusable when `version` cannot run (before it is activated)."""
        rules = await load_version(pg, version)
        await asyncio.to_thread(runnable, rules)

    @property
    def cached(self) -> Engine | None:
        """The engine last used by a writer, if any (no database round trip)."""
        return self._engine


def runnable(rules: CompiledRuleSet) -> Engine:
    """The engine for compiled rules, checked on an ordinary visitor's events first
    (simulation.check_runs); VersionUnusable when it cannot be built or cannot score them."""
    try:
        engine = Engine(rules)
        check_runs(engine, now=time.time())
    except Exception as exc:  # whatever the cause, this version cannot score
        raise VersionUnusable(rules.version, f"{type(exc).__name__}: {exc}"[:500]) from exc
    return engine
