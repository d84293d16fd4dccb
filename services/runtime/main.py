"""The process entry point: embedded infrastructure when unconfigured, then the consumer, the
outbox relay and the HTTP API in one event loop, until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator

import uvicorn

from services.http import create_app
from services.runtime.bootstrap import bootstrap
from services.runtime.embedded import Broker, EmbeddedPostgres, EmbeddedTansu, embedded_broker
from services.runtime.logs import configure_logging
from services.settings import Settings

log = logging.getLogger("leadscore")


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def with_embedded_infrastructure(
    settings: Settings,
) -> tuple[Settings, Broker | None, EmbeddedPostgres | None]:
    """Start an embedded broker and/or database for what the environment leaves unset."""
    broker = database = None
    updates: dict[str, object] = {}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.embedded_database:
        database = EmbeddedPostgres(settings.data_dir / "postgres").start()
        updates["database_url"] = database.database_url()
    if settings.embedded_broker:
        broker = embedded_broker(
            settings.data_dir,
            settings.embedded_broker_port,
            kind=settings.embedded_broker_kind,
            log_file=settings.data_dir / "broker.log",
        )
        updates["kafka_bootstrap"] = broker.bootstrap
        if settings.kafka_group_instance_id is None:
            updates["kafka_group_instance_id"] = "leadscore-local"  # one instance on this box
        if isinstance(broker, EmbeddedTansu):
            updates["kafka_enable_idempotence"] = False
    if updates:
        settings = settings.with_changes(**updates)
    return settings, broker, database


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM (status 0) or until a loop dies for good (status 1)."""
    if settings.api_tokens is None:
        log.warning(
            "no API tokens configured (LEADSCORE_API_TOKENS): the API accepts requests without "
            "a token from loopback only; make tokens with 'leadscore token NAME ROLE'"
        )
    container = bootstrap(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_memory)
    await container.start()
    server = QuietServer(
        uvicorn.Config(
            create_app(container),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            lifespan="off",
        )
    )
    http = asyncio.create_task(server.serve(), name="http")
    *workers, relay = container.run(stop)  # the relay comes last
    # 0.0.0.0 listens everywhere; a person opens it as localhost.
    host = "localhost" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    base = f"http://{host}:{settings.http_port}"
    log.info("leadscore serving on %s; the console: %s/console", base, base)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(
        {*workers, relay, http, stopper}, return_when=asyncio.FIRST_COMPLETED
    )
    signalled = stop.is_set()
    stop.set()
    log.info("stopping: finishing the batch in hand")
    for task in done:
        if task is not stopper and task.exception():
            log.error("%s failed", task.get_name(), exc_info=task.exception())
    ended = sorted(t.get_name() for t in done if t is not stopper)
    if not signalled and container.supervisor.fatal is None:
        container.supervisor.fatal = f"{', '.join(ended)} ended unexpectedly"
    # Order: the consumer commits its last batch, the relay publishes what is left, then the
    # HTTP server and the clients close.
    await asyncio.gather(*workers, return_exceptions=True)
    container.relay.notify()
    await asyncio.gather(relay, return_exceptions=True)
    server.should_exit = True
    await asyncio.gather(http, return_exceptions=True)
    await container.close()
    if container.supervisor.fatal:
        log.error("stopped: %s", container.supervisor.fatal)
        return 1
    log.info("stopped cleanly")
    return 0


def log_memory() -> None:
    """SIGUSR1: where the Python heap is, for a process whose memory grows. Start the service
    with PYTHONTRACEMALLOC=10 for the allocation sites (docs/operations/runbook.md, Memory
    growing)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        log.warning("memory: start with PYTHONTRACEMALLOC=10 to see allocation sites")
        return
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    log.warning("memory: %.1f MB traced; the largest allocation sites:", total / 2**20)
    for stat in snapshot.statistics("traceback")[:15]:
        frames = " <- ".join(
            f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback[:4]
        )
        log.warning("memory: %.1f MB in %d blocks at %s", stat.size / 2**20, stat.count, frames)


def tune_garbage_collector() -> None:
    """Collect young objects less often, and never rescan what start-up built.

    Scoring allocates a few small objects per event; at the default threshold (700) the
    collector runs so often that it takes about half of the engine's time
    (docs/performance/index.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    configure_logging(settings.log_level, log_format=settings.log_format)
    settings, broker, database = with_embedded_infrastructure(settings)
    if broker or database:
        log.info(
            "embedded infrastructure: broker %s, database data in %s",
            settings.kafka_bootstrap,
            settings.data_dir,
        )
    tune_garbage_collector()
    try:
        status = asyncio.run(serve(settings))
    finally:
        if broker:
            broker.stop()
    if status:
        raise SystemExit(status)
