"""Scored history partitioned by month of event time, so retention drops whole months.

`lead_events` becomes a table partitioned by range of `occurred_at`, one partition per
calendar month (`lead_events_2026_12`), plus a default partition for events outside every
month that has one (a late event older than the oldest month). Retention then drops a month's
partition in one statement instead of deleting its rows in chunks, and a batch's inserts land
in the current month's partition, whose indexes stay small however long history grows.

Indexes, each paid on every event written:
- primary key (id, occurred_at): re-scoring and the challenger rewrite rows by id (a key of
  a partitioned table must hold the partition column);
- `lead_events_lead` (lead_id, id): a lead's history (explanations, replays, merges);
- `lead_events_dedup` (raw_id, message_id, occurred_at), unique: the dedup key. The service
  looks a key up by (raw_id, message_id) in every month (a resend with another timestamp is
  still a duplicate); the unique index is the database's own guard against two writers
  inserting one event at once, which carries the same timestamp.
- The index on occurred_at alone is gone: its one hot reader was retention's chunked delete;
  window queries (impact reports) now skip months by partition pruning. The default partition
  keeps one, for retention's deletes there.

The migration moves existing rows (one INSERT ... SELECT; on a large history it takes a
while, and the service is not running meanwhile). It creates a partition for every month from
the oldest stored event (at most five years back, and at least thirteen months back) to two
months ahead; the service creates later months ahead of time
(services/adapters/postgres/history_partitions.py).

Revision ID: 0014
Revises: 0013
"""

from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

MONTHS_BACK_AT_LEAST = 13
MONTHS_BACK_AT_MOST = 60
MONTHS_AHEAD = 2


def _shift(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def upgrade() -> None:
    op.execute("ALTER TABLE lead_events RENAME TO lead_events_unpartitioned")
    op.execute("ALTER INDEX lead_events_pkey RENAME TO lead_events_unpartitioned_pkey")
    op.execute("DROP INDEX lead_events_lead, lead_events_occurred, lead_events_dedup")
    # The ids go on from the same sequence; it must outlive the old table.
    op.execute("ALTER SEQUENCE lead_events_id_seq OWNED BY NONE")
    op.execute(
        "CREATE TABLE lead_events (LIKE lead_events_unpartitioned INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (occurred_at)"
    )
    oldest = (
        op.get_bind()
        .execute(sa.text("SELECT min(occurred_at) FROM lead_events_unpartitioned"))
        .scalar()
    )
    this_month = datetime.now(UTC).date().replace(day=1)
    first = _shift(this_month, -MONTHS_BACK_AT_LEAST)
    if oldest is not None:
        first = max(
            min(first, oldest.date().replace(day=1)), _shift(this_month, -MONTHS_BACK_AT_MOST)
        )
    month = first
    while month <= _shift(this_month, MONTHS_AHEAD):
        following = _shift(month, 1)
        op.execute(
            f"CREATE TABLE lead_events_{month:%Y_%m} PARTITION OF lead_events "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{following.isoformat()}')"
        )
        month = following
    op.execute("CREATE TABLE lead_events_default PARTITION OF lead_events DEFAULT")
    op.execute("INSERT INTO lead_events SELECT * FROM lead_events_unpartitioned ORDER BY id")
    op.execute("DROP TABLE lead_events_unpartitioned")
    op.execute("ALTER SEQUENCE lead_events_id_seq OWNED BY lead_events.id")
    # Built after the copy: one sort per partition instead of one insertion per row.
    op.execute("ALTER TABLE lead_events ADD PRIMARY KEY (id, occurred_at)")
    op.execute("CREATE INDEX lead_events_lead ON lead_events (lead_id, id)")
    op.execute(
        "CREATE UNIQUE INDEX lead_events_dedup ON lead_events (raw_id, message_id, occurred_at)"
    )
    op.execute("CREATE INDEX lead_events_default_occurred ON lead_events_default (occurred_at)")


def downgrade() -> None:
    op.execute("ALTER TABLE lead_events RENAME TO lead_events_partitioned")
    op.execute("ALTER SEQUENCE lead_events_id_seq OWNED BY NONE")
    op.execute("CREATE TABLE lead_events (LIKE lead_events_partitioned INCLUDING DEFAULTS)")
    op.execute("INSERT INTO lead_events SELECT * FROM lead_events_partitioned ORDER BY id")
    op.execute("DROP TABLE lead_events_partitioned")
    op.execute("ALTER SEQUENCE lead_events_id_seq OWNED BY lead_events.id")
    op.execute("ALTER TABLE lead_events ADD PRIMARY KEY (id)")
    op.execute("CREATE INDEX lead_events_lead ON lead_events (lead_id, id)")
    op.execute("CREATE INDEX lead_events_occurred ON lead_events (occurred_at)")
    # Fails if two stored rows share a key with different timestamps (the partitioned table's
    # own index allows that; the service never writes such a pair).
    op.execute("CREATE UNIQUE INDEX lead_events_dedup ON lead_events (raw_id, message_id)")
