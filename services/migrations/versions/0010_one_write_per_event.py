"""One write per event, and lighter lead rows.

The messageId dedup key moves into the scored-history row (`lead_events.raw_id` with
`message_id`, unique): every event scored writes one row instead of a history row plus a
`processed_events` row. `processed_events` stays, read only, for the keys stored before this
upgrade; duplicates are recognised for as long as history is kept (400 days by default).

What the service alone writes and reads back whole, and builds itself (a lead's scoring
document, an event's rule hits), becomes `json`, which PostgreSQL stores as the text it was
given, instead of `jsonb`, which it parses into a binary form on every write and prints back
on every read; nothing queries inside them. Traits and event documents, which carry what
senders wrote, stay `jsonb`: its refusal of NUL is a second line of defence behind intake.
The index on the total is dropped: `leads_by_score` (total descending, then id) serves the
same queries, and every lead update paid for both.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lead_events ADD COLUMN raw_id text")
    op.execute("CREATE UNIQUE INDEX lead_events_dedup ON lead_events (raw_id, message_id)")
    op.execute(
        "ALTER TABLE lead_events "
        "ALTER COLUMN hits DROP DEFAULT, ALTER COLUMN hits TYPE json USING hits::json, "
        "ALTER COLUMN hits SET DEFAULT '[]'"
    )
    op.execute("DROP INDEX leads_total")
    op.execute(
        "ALTER TABLE leads ALTER COLUMN scoring DROP DEFAULT, "
        "ALTER COLUMN scoring TYPE json USING scoring::json, "
        "ALTER COLUMN scoring SET DEFAULT '{}'"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE leads ALTER COLUMN scoring DROP DEFAULT, "
        "ALTER COLUMN scoring TYPE jsonb USING scoring::jsonb, "
        "ALTER COLUMN scoring SET DEFAULT '{}'"
    )
    op.execute("CREATE INDEX leads_total ON leads ((fit + engagement))")
    op.execute(
        "ALTER TABLE lead_events "
        "ALTER COLUMN hits DROP DEFAULT, ALTER COLUMN hits TYPE jsonb USING hits::jsonb, "
        "ALTER COLUMN hits SET DEFAULT '[]'"
    )
    # Keys stored since the upgrade go back to processed_events.
    op.execute(
        "INSERT INTO processed_events (raw_id, message_id) SELECT raw_id, message_id "
        "FROM lead_events WHERE raw_id IS NOT NULL ON CONFLICT DO NOTHING"
    )
    op.execute("DROP INDEX lead_events_dedup")
    op.execute("ALTER TABLE lead_events DROP COLUMN raw_id")
