"""Producing events to a test's topics and reading the records the service wrote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.settings import Settings


async def produce(
    settings: Settings,
    docs: list[dict[str, Any] | bytes],
    *,
    key: Callable[[Any], bytes | None] | None = None,
) -> None:
    """Send events to the input topic, keyed by userId else anonymousId by default."""
    # Room for the oversized messages some tests send on purpose.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = []
        for doc in docs:
            if isinstance(doc, bytes):
                value, k = doc, None
            else:
                value = orjson.dumps(doc)
                k = (
                    key(doc)
                    if key
                    else (doc.get("userId") or doc.get("anonymousId") or "").encode() or None
                )
            futures.append(await producer.send(settings.topic_events, value, key=k))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(
    settings: Settings, topic: str, *, expect: int, timeout: float = 30
) -> list[Any]:
    """Read `topic` from the start until at least `expect` records are there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
        # Pick up anything beyond `expect` that is already there.
        ends = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            for items in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(items)
        return records
    finally:
        await consumer.stop()


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]
