"""Kafka clients (aiokafka) and topic set-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from io import BytesIO
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
)
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from services.outputs import all_topics
from services.settings import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> None:
    """Create the topics the service uses; the broker would auto-create them with the wrong
    partition count otherwise."""
    assert settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in all_topics(settings) if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, settings.topic_partitions, 1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another instance was quicker
            log.info("created topics %s with %d partitions", missing, settings.topic_partitions)
    finally:
        await admin.close()


# -- topic ids: which log a topic name stands for now ---------------------------------------
#
# Kafka gives every topic a random id when it is created (KIP-516), so a broker that came back
# without its log, or a topic deleted and created again, answers with a new id for the same
# name. aiokafka 0.14 speaks Metadata up to v5, which has no ids; v12 (Kafka 3.1 and later)
# has them. The request and answer below are Kafka's Metadata v12 schema, field for field.


class _Uuid(AbstractType[uuid.UUID | None]):  # type: ignore[misc]
    @classmethod
    def encode(cls, value: uuid.UUID | None) -> bytes:
        return (value or uuid.UUID(int=0)).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID | None:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        value = uuid.UUID(bytes=raw)
        return None if value.int == 0 else value  # all zeros: the broker has no id for it


class _MetadataResponseV12(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _MetadataRequestV12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = _MetadataResponseV12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicIdsRequest(Request[_MetadataRequestV12]):  # type: ignore[misc]
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV12]) -> _MetadataRequestV12:
        return request_struct_class([(None, t, {}) for t in self._topics], False, False, {})


class TopicIds:
    """Asks the broker for topics' ids over a client's connection (one small request)."""

    # Error code 3: the topic does not exist (now).
    UNKNOWN_TOPIC = 3

    def __init__(self, client: Any) -> None:
        self.client = client
        self.supported = True  # until the broker says otherwise (Tansu has no v12)

    async def current(self, topic: str) -> uuid.UUID | None:
        """The topic's id now; None where the broker cannot say (no v12, no ids). Raises
        `TopicMissing` when the topic does not exist."""
        if not self.supported:
            return None
        node = self.client.get_random_node()
        if node is None:
            raise KafkaError("no broker known to ask for topic ids")
        try:
            answer = await self.client.send(node, _TopicIdsRequest([topic]))
        except NotImplementedError:
            # The broker named its Metadata versions, and v12 is not among them (Tansu).
            log.warning("the broker has no Metadata v12 (topic ids); relying on fingerprints")
            self.supported = False
            return None
        except IncompatibleBrokerVersion as exc:
            # aiokafka raises this when the connection does not know the broker's API versions
            # (its ApiVersions answer was empty: a broker still starting). Giving up on ids
            # here would open the fence for good; a transient error is asked again instead.
            raise KafkaError(f"the broker's API versions are not known yet ({exc})") from exc
        for error_code, name, topic_id, *_ in answer.topics:
            if name == topic:
                if error_code == self.UNKNOWN_TOPIC:
                    raise TopicMissing(topic)
                if error_code:
                    raise KafkaError(f"metadata for {topic}: error {error_code}")
                return topic_id  # type: ignore[no-any-return]
        raise TopicMissing(topic)


class TopicMissing(KafkaError):  # type: ignore[misc]
    """The topic does not exist on the broker (now): its log was lost, or it was deleted."""


# How long the fingerprint check waits for the records it asked for. A healthy broker answers
# in milliseconds; the wait only runs out where the record is missing.
FINGERPRINT_WAIT_SECONDS = 3.0


async def lost_partitions(
    settings: Settings, topic: str, fingerprints: dict[int, tuple[int, int]]
) -> dict[int, int]:
    """Partitions of `topic` whose log is not the one the fingerprints were taken from: the
    lost-log check where the broker gives no topic ids (the Tansu fallback).

    `fingerprints` maps partition -> (next offset, CRC-32 of the record before it). A
    partition's log is lost when that record is out of range (the log ends before it) or
    there with other contents. Returns partition -> the new log's first offset. A record
    aged out by retention (the log now starts after it) is not a loss.
    """
    probe = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="none",
        request_timeout_ms=5000,
    )
    await probe.start()
    try:
        tps = {TopicPartition(topic, p): v for p, v in fingerprints.items()}
        await probe.topics()  # a fresh metadata request: which partitions exist now
        known = set(probe.partitions_for_topic(topic) or ())
        tps = {tp: v for tp, v in tps.items() if tp.partition in known}
        if not tps:
            return dict.fromkeys(fingerprints, 0)  # the topic (or those partitions) is gone
        probe.assign(list(tps))
        # End offsets are not used: Tansu (the only broker this check runs for: Kafka has topic
        # ids) reports them a record batch short.
        begins = await probe.beginning_offsets(list(tps))
        lost: dict[int, int] = {}
        pending: set[TopicPartition] = set()
        for tp, (next_offset, _) in tps.items():
            if begins[tp] > next_offset - 1:
                continue  # aged out by retention: nothing left to compare, nothing skipped
            probe.seek(tp, next_offset - 1)
            pending.add(tp)
        deadline = time.monotonic() + FINGERPRINT_WAIT_SECONDS
        while pending and time.monotonic() < deadline:
            try:
                batch = await probe.getmany(*pending, timeout_ms=500, max_records=len(pending))
            except OffsetOutOfRangeError as exc:
                for tp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else pending:
                    lost[tp.partition] = begins[tp]
                    pending.discard(tp)
                continue
            for tp, records in batch.items():
                if tp not in pending or not records:
                    continue
                pending.discard(tp)
                first = records[0]
                expected_offset, crc = tps[tp][0] - 1, tps[tp][1]
                if first.offset != expected_offset or zlib.crc32(first.value or b"") != crc:
                    lost[tp.partition] = begins[tp]
                probe.pause(tp)
        if pending:
            # No record where one must be. Real Kafka would have said "out of range"; the
            # Tansu fallback returns nothing. Its end offsets run a batch short, so only an
            # end before the stored offset, with the record missing too, counts as lost.
            ends = await probe.end_offsets(list(pending))
            for tp in pending:
                if ends[tp] < tps[tp][0]:
                    lost[tp.partition] = begins[tp]
        missing = set(fingerprints) - {tp.partition for tp in tps}
        lost.update(dict.fromkeys(missing, 0))
        return lost
    finally:
        await probe.stop()


async def broker_reachable(settings: Settings, timeout: float) -> bool:
    """A real metadata request, for readiness (cached metadata says nothing of now)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout)


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=settings.producer_linger_ms,
        enable_idempotence=settings.kafka_enable_idempotence,
        # One megabyte per partition batch: a full outbox batch leaves in a few requests.
        max_batch_size=1024 * 1024,
        request_timeout_ms=10_000,
        # The largest record the relay sends; DLQ copies are cut below it (store.dlq_value).
        max_request_size=settings.max_record_bytes + 64 * 1024,
    )


def make_consumer(settings: Settings, *, group_suffix: str = "") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group + group_suffix,
        enable_auto_commit=False,
        # Never jump silently: an offset out of range means the broker lost the log we were
        # reading, which the consumer handles (TopicConsumer.check_log).
        auto_offset_reset="none",
        # Fetch enough per partition to fill a batch in one round trip.
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=max(settings.batch_timeout_ms, 1),
        # A batch must finish well within this, or the group evicts the consumer.
        max_poll_interval_ms=300_000,
        # The group is assigned the partitions this consumer's metadata knows of. A topic
        # created again (a broker back without its log) is unknown to it until the next
        # refresh, and until then nothing of it is assigned: refresh as often as the log is
        # checked, not every five minutes (aiokafka's default).
        metadata_max_age_ms=int(settings.log_check_seconds * 1000),
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 3, 300),
        group_instance_id=(
            settings.kafka_group_instance_id + group_suffix
            if settings.kafka_group_instance_id
            else None
        ),
    )


async def send_lines(lines: list[bytes], settings: Settings) -> int:
    """Produce a JSON-lines file of Segment events to the input topic, keyed as trackers do."""
    bootstrap_servers = bootstrap_of(settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a client that never started still holds its connections
        raise
    sent = 0
    try:
        for line in lines:
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
                key = doc.get("userId") or doc.get("anonymousId")
            except (orjson.JSONDecodeError, AttributeError):
                key = None  # the service will send it to the DLQ and say why
            await producer.send_and_wait(
                settings.topic_events, line.strip(), key=str(key).encode() if key else None
            )
            sent += 1
    finally:
        await producer.stop()
    return sent


# How many dead letters one `leadscore dead-letters list` reads at most.
MAX_DEAD_LETTERS = 10_000


def bootstrap_of(settings: Settings) -> str:
    """The broker a command-line tool or a reader talks to: the configured one, else the
    embedded one `make run` starts."""
    return settings.kafka_bootstrap or f"127.0.0.1:{settings.embedded_broker_port}"


def _reader(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of no group (nothing committed) for reading a topic back. "earliest":
    otherwise the client's default reset to the end can race a seek to the beginning."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_of(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def read_dead_letters(
    settings: Settings, *, since: float | None = None, limit: int = 100
) -> list[Any]:
    """Records of the dead-letter topic, oldest first, from `since` (epoch seconds) on, at
    most `limit` of them: read with a consumer of no group, so nothing is committed."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topic_dlq, p)
            for p in sorted(await _partitions_of(settings, settings.topic_dlq))
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        if since is None:
            await consumer.seek_to_beginning(*partitions)
        else:
            # A time before 1970 means from the beginning (the client refuses a negative one).
            at_ms = max(int(since * 1000), 0)
            found = await consumer.offsets_for_times({tp: at_ms for tp in partitions})
            for tp in partitions:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
        records: list[Any] = []
        while len(records) < min(limit, MAX_DEAD_LETTERS):
            behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            batch = await consumer.getmany(*behind, timeout_ms=1000)
            for items in batch.values():
                records.extend(
                    r for r in items if r.offset < ends[TopicPartition(r.topic, r.partition)]
                )
        records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        return records[:limit]
    finally:
        await consumer.stop()


async def _partitions_of(settings: Settings, topic: str) -> set[int]:
    """The topic's partitions, asked of the cluster for this topic now (a consumer with no
    subscription may not hold the topic's metadata yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_of(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {
        part["partition"]
        for entry in described
        if entry["topic"] == topic and not entry["error_code"]
        for part in entry["partitions"]
    }


async def dead_letter_at(settings: Settings, partition: int, offset: int) -> Any | None:
    """The dead letter at `partition`:`offset`, or None when there is none (any more)."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_dlq, partition)
        if partition not in await _partitions_of(settings, settings.topic_dlq):
            return None
        consumer.assign([tp])
        start, end = (
            (await consumer.beginning_offsets([tp]))[tp],
            (await consumer.end_offsets([tp]))[tp],
        )
        if not start <= offset < end:
            return None
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        records = batch.get(tp, [])
        return records[0] if records and records[0].offset == offset else None
    finally:
        await consumer.stop()
