"""Reliability: records the broker refuses are set aside; each partition remembers a
fingerprint of the last record scored, to recognise a broker that lost its log.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE consumer_offsets ADD COLUMN last_crc bigint;
ALTER TABLE outbox ADD COLUMN failed_at timestamptz, ADD COLUMN error text;
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_failed ON outbox (id) WHERE failed_at IS NOT NULL
"""


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX outbox_failed")
    op.execute("DROP INDEX outbox_pending")
    op.execute("CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL")
    op.execute("ALTER TABLE outbox DROP COLUMN failed_at, DROP COLUMN error")
    op.execute("ALTER TABLE consumer_offsets DROP COLUMN last_crc")
