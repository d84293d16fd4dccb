"""The process entry point: embedded infrastructure when unconfigured, then the consumer, the
outbox relay and the HTTP API in one event loop, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn

from services.bootstrap import bootstrap
from services.embedded import EmbeddedBroker, EmbeddedPostgres
from services.http import create_app
from services.settings import Settings

log = logging.getLogger("leadscore")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def with_embedded_infrastructure(
    settings: Settings,
) -> tuple[Settings, EmbeddedBroker | None, EmbeddedPostgres | None]:
    """Start an embedded broker and/or database for what the environment leaves unset."""
    broker = database = None
    updates: dict[str, object] = {}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.embedded_database:
        database = EmbeddedPostgres(settings.data_dir / "postgres").start()
        updates["database_url"] = database.database_url()
    if settings.embedded_broker:
        broker = EmbeddedBroker(settings.embedded_broker_port).start(
            log_file=settings.data_dir / "broker.log"
        )
        updates["kafka_bootstrap"] = broker.bootstrap
    if updates:
        settings = Settings.model_validate({**settings.model_dump(), **updates})
    return settings, broker, database


async def serve(settings: Settings) -> None:
    container = bootstrap(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await container.start()
    server = _Server(uvicorn.Config(
        create_app(container), host=settings.http_host, port=settings.http_port,
        log_level="warning", lifespan="off",
    ))
    http = asyncio.create_task(server.serve(), name="http")
    relay = asyncio.create_task(container.relay.run(stop), name="relay")
    consumer = asyncio.create_task(container.scorer.run(stop), name="consumer")
    log.info("leadscore serving on http://%s:%d", settings.http_host, settings.http_port)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({consumer, relay, http, stopper},
                                 return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    log.info("stopping: finishing the batch in hand")
    for task in done:
        if task is not stopper and task.exception():
            log.error("%s failed", task.get_name(), exc_info=task.exception())
    # Order: the consumer commits its last batch, the relay publishes what is left, then the
    # HTTP server and the clients close.
    await asyncio.gather(consumer, return_exceptions=True)
    container.relay.notify()
    await asyncio.gather(relay, return_exceptions=True)
    server.should_exit = True
    await asyncio.gather(http, return_exceptions=True)
    await container.close()
    log.info("stopped cleanly")


def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings, broker, database = with_embedded_infrastructure(settings)
    if broker or database:
        log.info("embedded infrastructure: broker %s, database data in %s",
                 settings.kafka_bootstrap, settings.data_dir)
    try:
        asyncio.run(serve(settings))
    finally:
        if broker:
            broker.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(prog="leadscore", description=__doc__)
    parser.add_subparsers(dest="command").add_parser("run", help="run the service (default)")
    parser.parse_args()
    run()


if __name__ == "__main__":
    cli()
