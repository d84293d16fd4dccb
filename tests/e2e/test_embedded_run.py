"""`make run` on a machine with nothing configured: the service starts its own Apache Kafka
and PostgreSQL under the data folder, says where Kafka's log lives, and keeps that log across
restarts, so events produced while the service is down are scored once when it is back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.workload import generate, lead_key
from services.runtime.embedded import EmbeddedKafka, free_port, java_available
from services.settings import Settings
from tests.e2e.test_faults import answering, metrics_of
from tests.helpers.kafka import produce
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not java_available(), reason="the embedded Apache Kafka needs Java 17+"
)


def start_run(
    data_dir: Path, broker_port: int, http_port: int, log: Path
) -> subprocess.Popen[bytes]:
    """`python -m services.runtime` as `make run` starts it: no broker, no database configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    env.update(
        {
            "LEADSCORE_DATA_DIR": str(data_dir),
            "LEADSCORE_EMBEDDED_BROKER_PORT": str(broker_port),
            "LEADSCORE_HTTP_PORT": str(http_port),
        }
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.runtime"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(90) == 0, log.read_text()[-3000:]


async def scored(settings: Settings) -> dict[str, float]:
    metrics = await metrics_of(settings)
    return {
        result: metrics.get(f'leadscore_events_consumed_total{{result="{result}"}}', 0)
        for result in ("scored", "duplicate")
    }


@pytest.mark.slow
async def test_events_sent_while_the_service_is_down_are_scored_once_after_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    broker_port, http_port = free_port(), free_port()
    # What the test's own clients need to reach the service and its broker.
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{broker_port}",
        database_url="postgresql+asyncpg://unused@/unused",
        http_port=http_port,
    )
    log = tmp_path / "service.log"
    docs = list(generate(events=2_000, leads=200, seed=21))

    process = start_run(data_dir, broker_port, http_port, log)
    try:
        await wait_for(lambda: answering(settings), timeout=120, what="first start")
        kafka_log = data_dir.resolve() / "kafka" / "log"
        assert f"its log is in {kafka_log}" in log.read_text()
        stop(process, log)  # the service stops its broker too
        # A healthy first start says nothing alarming but the deliberate "no tokens" line
        # (JSON lines here: the log is not a terminal).
        alarms = [
            line
            for line in log.read_text().splitlines()
            if '"level":"WARNING"' in line or '"level":"ERROR"' in line
        ]
        assert len(alarms) == 1 and "no API tokens configured" in alarms[0], alarms
        assert "/console" in log.read_text()  # the start-up line names the console

        # The service is down; its broker is started alone on the same log, as a producer
        # on another machine would find it, and stopped again after the events are in.
        broker = EmbeddedKafka(data_dir / "kafka", broker_port).start()
        await produce(settings, docs, key=lead_key)
        broker.stop()

        process = start_run(data_dir, broker_port, http_port, log)
        await wait_for(lambda: answering(settings), timeout=120, what="second start")
        await wait_for(
            lambda: _scored_at_least(settings, len(docs)), timeout=120, what="the backlog"
        )
        assert await scored(settings) == {"scored": len(docs), "duplicate": 0}
        stop(process, log)

        # A third start has nothing left to do: one new event is all it scores.
        process = start_run(data_dir, broker_port, http_port, log)
        await wait_for(lambda: answering(settings), timeout=120, what="third start")
        await produce(settings, list(generate(events=1, leads=1, seed=22)), key=lead_key)
        await wait_for(lambda: _scored_at_least(settings, 1), timeout=60, what="one new event")
        assert await scored(settings) == {"scored": 1, "duplicate": 0}
        stop(process, log)
    finally:
        if process.poll() is None:
            process.kill()


async def _scored_at_least(settings: Settings, n: int) -> bool:
    try:
        return (await scored(settings))["scored"] >= n
    except Exception:
        return False
