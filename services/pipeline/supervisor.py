"""Supervision of the instance's long-running loops (consumers, deadline watcher, relay).

Each loop waits out broker and database outages itself. What reaches the supervisor is an
error nobody foresaw: the loop is restarted with back-off, and a loop that keeps failing is
given up: readiness reports why at once, and the process then stops with a non-zero status
so that the orchestrator replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from services.metrics import Metrics

log = logging.getLogger(__name__)

# Restarts allowed within the window before the loop counts as dead for good: enough to ride
# out a burst of bad luck, few enough that a real defect stops the process within minutes.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 300.0
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
# After giving up, readiness says why for this long before the process stops, so a probe
# (and whoever looks) sees the reason rather than a vanished process.
GIVE_UP_GRACE_SECONDS = 3.0


class Supervisor:
    def __init__(
        self,
        metrics: Metrics,
        *,
        max_restarts: int = MAX_RESTARTS,
        backoff: tuple[float, ...] = BACKOFF_SECONDS,
        grace: float = GIVE_UP_GRACE_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.grace = grace
        # Loop name -> why it is not running normally now (shown by /readyz).
        self.problems: dict[str, str] = {}
        self.fatal: str | None = None

    async def supervise(
        self, name: str, body: Callable[[], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Run `body` until it returns (it does when `stop` is set), restarting it on errors."""
        restarts: deque[float] = deque()
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300]
                now = time.monotonic()
                restarts.append(now)
                while restarts and restarts[0] < now - RESTART_WINDOW_SECONDS:
                    restarts.popleft()
                if stop.is_set():
                    log.error("%s failed while stopping: %s", name, reason, exc_info=exc)
                    return
                if len(restarts) > self.max_restarts:
                    self.fatal = f"{name} failed {len(restarts)} times: {reason}"
                    self.problems[name] = f"gave up: {reason}"
                    log.critical("%s; stopping the process", self.fatal, exc_info=exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.grace)
                    stop.set()
                    return
                delay = self.backoff[min(len(restarts) - 1, len(self.backoff) - 1)]
                self.problems[name] = f"restarting after {reason}"
                self.metrics.loop_restarts.labels(name).inc()
                log.error("%s failed (%s); restarting in %.1f s", name, reason, delay, exc_info=exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return
                self.problems.pop(name, None)
