"""The id of the topic (Kafka's topic id, KIP-516) each stored partition offset belongs to.

An offset means something only in the log it was read from. A broker that comes back without
its log, or a topic deleted and created again, keeps the name but gets a new id: a batch read
under another id than the stored one is from a new log, and the consumer starts that log from
its beginning instead of at the old offsets (services/pipeline/consumer.py). NULL where the broker
gives no ids (the Tansu fallback) or before the first batch.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE consumer_offsets ADD COLUMN topic_id uuid")


def downgrade() -> None:
    op.execute("ALTER TABLE consumer_offsets DROP COLUMN topic_id")
