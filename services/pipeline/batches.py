"""A batch's policy, apart from the loop that reads it: what a handler must offer, what a
batch reports after its commit, a refused record on its way to the DLQ, and how a batch the
database refuses is split until the refused records stand alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiokafka.structs import ConsumerRecord

from scoring_service.intake import Rejection
from services.adapters.postgres import outbox_store
from services.pipeline.lead_transaction import LeadTransaction


class DatabaseUnavailable(Exception):
    """A batch could not reach the database; the batch in hand is dropped and re-read."""


class PoisonRecord(Exception):
    """Processing one parsed record raised; that record goes to the DLQ, the batch goes on."""

    def __init__(self, item: Any, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.item = item
        self.error = error


# Partition -> its records in offset order, each with what the handler parsed from it.
Parsed = dict[int, list[tuple[ConsumerRecord, Any]]]


def split_batch(parsed: Parsed) -> tuple[Parsed, Parsed]:
    """Two halves that each keep every partition's records in offset order."""
    if len(parsed) > 1:
        partitions = sorted(parsed)
        half = len(partitions) // 2
        return (
            {p: parsed[p] for p in partitions[:half]},
            {p: parsed[p] for p in partitions[half:]},
        )
    [(partition, items)] = parsed.items()
    half = len(items) // 2
    return {partition: items[:half]}, {partition: items[half:]}


def without(parsed: Parsed, target: Any, rejection: Rejection) -> Parsed:
    """The same records with the one whose parsed value is `target` turned into a rejection."""
    return {
        p: [(r, rejection if v is target else v) for r, v in items] for p, items in parsed.items()
    }


def printable(text: str) -> str:
    """Text safe to store and send in a header: ASCII, NUL and lone surrogates escaped."""
    return text.encode("ascii", "backslashreplace").decode().replace("\x00", "\\x00")


def processing_failure(error: BaseException) -> Rejection:
    return Rejection("processing_error", printable(f"{type(error).__name__}: {error}"[:1000]))


Outcome = TypeVar("Outcome")  # what a handler reports of a batch, counted after commit


Item = TypeVar("Item")  # what a handler parses a record into


@dataclass
class BatchReport(Generic[Outcome]):
    """What one committed batch did; `outcomes` are the handler's own results."""

    scored: int = 0
    duplicates: int = 0
    # Events from crawlers: counted, not scored (schemas.rule_set.Bots).
    bots: int = 0
    # Events of people erased and suppressed: counted, not scored, stored or dead-lettered.
    suppressed: int = 0
    invalid: int = 0
    stale: int = 0
    # Scored events that came without a messageId (the intake made one).
    generated_ids: int = 0
    dlq_codes: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    fingerprints: dict[int, int | None] = field(default_factory=dict)
    seek_to: dict[int, int] = field(default_factory=dict)

    def merge(self, other: BatchReport[Outcome]) -> None:
        """Add a later part of the same batch (one that was split) to this report."""
        self.scored += other.scored
        self.duplicates += other.duplicates
        self.bots += other.bots
        self.suppressed += other.suppressed
        self.invalid += other.invalid
        self.stale += other.stale
        self.generated_ids += other.generated_ids
        self.dlq_codes.extend(other.dlq_codes)
        self.outcomes.extend(other.outcomes)
        self.next_offsets.update(other.next_offsets)
        self.fingerprints.update(other.fingerprints)
        self.seek_to.update(other.seek_to)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be used, on its way to the DLQ topic with the reason."""

    record: ConsumerRecord
    rejection: Rejection

    def to_outbox(self, *, topic: str, max_record_bytes: int) -> outbox_store.OutboxRow:
        record, rejection = self.record, self.rejection
        headers = [
            ("error", rejection.code),
            ("error_detail", printable(rejection.detail[:1000])),
            ("source_topic", record.topic),
            ("source_partition", str(record.partition)),
            ("source_offset", str(record.offset)),
        ]
        value, key = record.value or b"", record.key
        if len(value) + len(key or b"") > max_record_bytes:
            # The broker would refuse the copy; keep its start and say how long it was.
            headers.append(("truncated_from_bytes", str(len(value))))
            key = key[:1024] if key else key
            value = value[: max_record_bytes - 1024]
        return outbox_store.OutboxRow(
            topic, key, value, f"{record.topic}:{record.partition}:{record.offset}", headers
        )


@dataclass(frozen=True, slots=True)
class BatchReads:
    """What a batch reads under its locks: the leads and accounts it names and its dedup
    keys (raw id, messageId). The consumer locks and reads them with the partitions'
    offset rows in one round trip (LeadTransaction.open_batch), with the suppression keys of
    the people its events name."""

    lead_ids: set[str]
    account_ids: set[str]
    keys: list[tuple[str, str]]
    suppression: list[bytes] = field(default_factory=list)


class TopicHandler(Protocol[Item, Outcome]):
    """What a topic's records mean: how to read one, how to apply a batch of them."""

    topic: str
    loop: str  # the supervisor's and the metrics' name for the consumer

    def parse(self, record: ConsumerRecord, now: float) -> Item | Rejection: ...

    def reads(self, items: list[Item]) -> BatchReads | None:
        """What the batch reads, when the handler wants it read with the partitions' rows
        in one call (then `apply` finds it in `tx`); None: `apply` locks its own leads."""
        ...

    async def apply(
        self,
        tx: LeadTransaction,
        items: list[tuple[ConsumerRecord, Item]],
        report: BatchReport[Outcome],
        dead_letter: Callable[[ConsumerRecord, Rejection], None],
    ) -> None: ...

    def count(self, report: BatchReport[Outcome]) -> None: ...
