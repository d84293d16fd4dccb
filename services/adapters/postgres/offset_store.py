"""Partition offsets: where each consumer's work ends, the log they belong to (its topic id)
and the fingerprints that tell a lost log apart.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg


class LogReplaced(Exception):
    """The batch was read from another log than the stored offsets were (the topic's id
    changed: the broker lost its log, or the topic was created again)."""

    def __init__(self, topic: str, log_id: uuid.UUID) -> None:
        super().__init__(f"{topic} is a new log now (topic id {log_id})")
        self.topic = topic
        self.log_id = log_id


async def lock_offsets(
    pg: asyncpg.Connection,
    topic: str,
    partitions: Sequence[int],
    log_id: uuid.UUID | None = None,
) -> dict[int, int]:
    """Lock this topic's partition offset rows and return each partition's next offset.

    The row lock serialises two consumers that both believe they own a partition (during a
    rebalance); the stored offset tells the later one which records are already done. With
    `log_id` (the topic id the batch was read under), raises LogReplaced when a row belongs
    to another log.
    """
    select = (
        "SELECT partition, next_offset, topic_id FROM consumer_offsets "
        "WHERE topic = $1 AND partition = ANY($2::int[]) ORDER BY partition FOR UPDATE"
    )
    rows = await pg.fetch(select, topic, list(partitions))
    if len(rows) < len(set(partitions)):
        # A partition scored here for the first time: its row is made, then locked with
        # the rest (one round trip more, once per partition in the life of the database).
        await pg.execute(
            "INSERT INTO consumer_offsets (topic, partition, next_offset) "
            "SELECT $1, p, 0 FROM unnest($2::int[]) AS p ON CONFLICT DO NOTHING",
            topic,
            list(partitions),
        )
        rows = await pg.fetch(select, topic, list(partitions))
    if log_id is not None and any(r["topic_id"] not in (None, log_id) for r in rows):
        raise LogReplaced(topic, log_id)
    return {r["partition"]: r["next_offset"] for r in rows}


async def start_new_log(pg: asyncpg.Connection, topic: str, log_id: uuid.UUID | None) -> list[int]:
    """Every stored offset of `topic` back to 0 for a new log (`log_id`, where known); the
    partitions reset. Rows already on that log stay: another instance got there first."""
    rows = await pg.fetch(
        "UPDATE consumer_offsets SET next_offset = 0, last_crc = NULL, topic_id = $2, "
        "updated_at = now() "
        "WHERE topic = $1 AND ($2::uuid IS NULL OR topic_id IS DISTINCT FROM $2) "
        "RETURNING partition",
        topic,
        log_id,
    )
    return sorted(r["partition"] for r in rows)


async def stored_log_ids(pg: asyncpg.Connection, topic: str) -> set[uuid.UUID]:
    rows = await pg.fetch(
        "SELECT DISTINCT topic_id FROM consumer_offsets WHERE topic = $1 AND topic_id IS NOT NULL",
        topic,
    )
    return {r["topic_id"] for r in rows}


async def save_offsets(
    pg: asyncpg.Connection,
    topic: str,
    next_offsets: dict[int, int],
    fingerprints: dict[int, int | None] | None = None,
    log_id: uuid.UUID | None = None,
) -> None:
    """Store where each partition's work ends, the id of the log it was read from, and a
    fingerprint (CRC-32 of the value) of the last record scored there: by either a broker
    that lost its log is recognised (the fingerprint where the broker gives no ids)."""
    fingerprints = fingerprints or {}
    await pg.execute(
        "UPDATE consumer_offsets o SET next_offset = v.next_offset, last_crc = v.crc, "
        "topic_id = COALESCE($5, o.topic_id), updated_at = now() "
        "FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS v(partition, next_offset, crc) "
        "WHERE o.topic = $1 AND o.partition = v.partition",
        topic,
        list(next_offsets),
        list(next_offsets.values()),
        [fingerprints.get(p) for p in next_offsets],
        log_id,
    )


async def stored_offsets(pg: asyncpg.Connection, topic: str) -> dict[int, int]:
    rows = await pg.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def stored_fingerprints(pg: asyncpg.Connection, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (next offset, CRC-32 of the record before it), where both are known."""
    rows = await pg.fetch(
        "SELECT partition, next_offset, last_crc FROM consumer_offsets "
        "WHERE topic = $1 AND last_crc IS NOT NULL AND next_offset > 0",
        topic,
    )
    return {r["partition"]: (r["next_offset"], r["last_crc"]) for r in rows}
