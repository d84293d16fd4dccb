"""The handler of `lead-events`: parse and validate each record, then score the batch in its
lead transaction (suppression, dedup, identity, accounts, the challenger beside the active
rules)."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.structs import ConsumerRecord

from scoring_service.intake import Event, Rejection, parse_event
from scoring_service.pipeline import ids_to_load, score_event, without_bots
from scoring_service.suppression import Suppression
from services.pipeline import challenger
from services.pipeline.batches import BatchReads, BatchReport, PoisonRecord
from services.pipeline.lead_transaction import LeadTransaction
from services.settings import Settings


class EventHandler:
    """`lead-events`: drop events of suppressed people and events seen before, then score
    the rest in batch order."""

    loop = "consumer"

    def __init__(self, settings: Settings, suppression: Suppression) -> None:
        self.topic = settings.topic_events
        self.suppression = suppression

    def parse(self, record: ConsumerRecord, now: float) -> Event | Rejection:
        return parse_event(record.value or b"", now=now, fallback_ts=record.timestamp / 1000)

    def reads(self, items: list[Event]) -> BatchReads:
        """Every id the batch may name a lead or an account by, its dedup keys, and the
        suppression keys of the people it names."""
        lead_ids, account_ids = ids_to_load(items)
        keys = self.suppression.event_keys
        return BatchReads(
            lead_ids,
            account_ids,
            list({(e.raw_id, e.message_id) for e in items}),
            list({key for e in items for key in keys(e)}),
        )

    async def apply(
        self,
        tx: LeadTransaction,
        items: list[tuple[ConsumerRecord, Event]],
        report: BatchReport[None],
        dead_letter: Callable[[ConsumerRecord, Rejection], None],
    ) -> None:
        # The consumer opened the transaction with `reads`: the working set is loaded and
        # the dedup keys were looked up under the leads' locks (they are stored with the
        # history rows, in this transaction).
        ws = tx.ws
        events: list[Event] = []
        seen = set(tx.seen)
        suppressed = tx.suppressed
        for _, event in items:
            if suppressed and not suppressed.isdisjoint(self.suppression.event_keys(event)):
                # An erased person's: nothing of it is kept, not even in the DLQ.
                report.suppressed += 1
                continue
            key = (event.raw_id, event.message_id)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            events.append(event)
        events, report.bots = without_bots(tx.engine, events)
        report.scored = len(events)
        report.generated_ids = sum(1 for e in events if e.message_id_generated)
        if tx.challenger is not None and events:
            # Opened before live scoring changes the working set: the challenger starts
            # from the same links and the same leads.
            tx.shadow = await challenger.open_shadow(tx.pg, tx.challenger, ws, tx.now)
        for event in events:
            try:
                scored = score_event(ws, tx.engine, event, now=tx.now)
            except Exception as exc:  # a defect the intake did not foresee: see PoisonRecord
                raise PoisonRecord(event, exc) from exc
            tx.scored.append(scored)
            tx.effects.extend(scored.effects)
            if tx.shadow is not None:
                tx.shadow.score(event, tx.now)

    def count(self, report: BatchReport[None]) -> None:
        pass
