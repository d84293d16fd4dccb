"""The outbox is split into lanes by record key, so relays in several instances publish at
once: each lane is published by one relay at a time, in id order, which keeps every key's
records (a lead's, an account's) in order on its topic. The live relays register in
`outbox_relays` and share the lanes out by rank.

The lane is computed by the database from the key, so every writer (and rows already
waiting at upgrade) agrees on it. Sixteen lanes: more instances than that would find no lane
to publish; changing the number later must wait for an empty outbox.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE outbox ADD COLUMN lane smallint GENERATED ALWAYS AS "
        "(CASE WHEN key IS NULL THEN 0 "
        "ELSE (hashtextextended(encode(key, 'hex'), 0) & 15)::smallint END) STORED"
    )
    # The live relays, each with the time it last said so; they share the lanes by rank.
    op.execute(
        "CREATE TABLE outbox_relays (relay_id text PRIMARY KEY, seen_at timestamptz NOT NULL)"
    )
    op.execute("DROP INDEX outbox_pending")
    op.execute(
        "CREATE INDEX outbox_pending ON outbox (lane, id) "
        "WHERE sent_at IS NULL AND failed_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox_relays")
    op.execute("DROP INDEX outbox_pending")
    op.execute("ALTER TABLE outbox DROP COLUMN lane")
    op.execute(
        "CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NULL"
    )
