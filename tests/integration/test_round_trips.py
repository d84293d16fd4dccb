"""What a batch costs in round trips to PostgreSQL, counted statement by statement, so that
none creeps back in unnoticed: every statement a batch of the event consumer sends, from
taking a connection to the commit, for a batch of new leads and for one of known leads.

A batch's fixed cost is mostly these round trips (docs/performance/index.md, The latency
tail): each is a turn of two processes on two shared cores. Lowering a budget here is the
proof that a change removed one; raising it needs a reason in the commit that does.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.adapters.postgres import db
from tests.helpers.factories import at, group, identify, page, track

# Statements per consumer batch, the ceiling this test holds. 2026-12-04: 21 and 22; 18 and
# 19 once each lane kept its connection (no pool checkout and ping per batch); 17 and 18 once
# the partition offsets were locked without an insert first; 10 and 11 once the locks and
# reads became one call (migration 0020: leadscore_open_batch). The history's COPY is not
# a statement the logger sees: one round trip more.
BUDGET_NEW_LEADS = 10
BUDGET_KNOWN_LEADS = 11


def records(topic: str, docs: list[dict[str, Any]], first_offset: int) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(topic, 0, first_offset + n, 0, 0, b"k", orjson.dumps(d), None, 0, 0, [])
        for n, d in enumerate(docs)
    ]


def twenty_events(people: str, round_: int) -> list[dict[str, Any]]:
    """A typical small batch: 20 events of 5 people at 2 companies, pages and forms."""
    docs: list[dict[str, Any]] = []
    for n in range(5):
        user = f"{people}-{n}"
        docs += [
            identify({"email": f"{user}@co{n % 2}.example", "title": "VP Ops"}, user=user)
            if round_ == 0
            else page("/blog", user=user, when=at(round_, hours=n)),
            group(f"{people}-co{n % 2}", {"industry": "Software"}, user=user, when=at(round_)),
            page("/pricing", user=user, when=at(round_, hours=n + 1)),
            track("Webinar Attended", user=user, when=at(round_, hours=n + 2)),
        ]
    return docs


async def test_a_batch_costs_no_more_round_trips_than_its_budget(open_container, monkeypatch):
    # No loop runs in this container: every statement counted is the batch's.
    sent: list[str] = []
    watched: set[int] = set()
    original = db.driver

    async def counting_driver(conn: Any) -> Any:
        pg = await original(conn)
        if id(pg) not in watched:
            watched.add(id(pg))
            pg.add_query_logger(lambda logged: sent.append(logged.query))
        return pg

    monkeypatch.setattr(db, "driver", counting_driver)
    scorer = open_container.scorer
    topic = open_container.settings.topic_events
    batches = [
        # The first batch on a connection also asks PostgreSQL about its types (asyncpg
        # caches the answers): warm-up, not counted.
        ("warm-up", twenty_events("warm", 0), None),
        ("new leads", twenty_events("new", 0), BUDGET_NEW_LEADS),
        ("known leads", twenty_events("new", 1), BUDGET_KNOWN_LEADS),
    ]
    counts = {}
    for n, (name, docs, budget) in enumerate(batches):
        sent.clear()
        report = await scorer.process({TopicPartition(topic, 0): records(topic, docs, 20 * n)})
        assert report.scored == 20, report
        counts[name] = len(sent)
        if budget is not None:
            listing = "\n".join(q.strip().split("\n")[0][:120] for q in sent)
            assert len(sent) <= budget, f"{name}: {len(sent)} statements\n{listing}"
    print(counts)
    # The count is of this batch's statements: none is the other round's or a loop's.
    assert counts["new leads"] > 5 and counts["known leads"] > 5, counts
