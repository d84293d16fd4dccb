"""The journey phase is a column the service writes, no longer one PostgreSQL derives.

Migration 0018 made `journey_phase` a stored generated column (`scoring -> 'journey' ->>
'phase'`). Every write of a lead or an account then parsed its whole scoring document
(about 1.3 KB of JSON) once more just to find the phase: a third of the cost of the batch's
lead upsert (docs/hot-path.md has the measurement). The service knows the phase when it
writes the row, so it writes it (lead_store.save_leads, save_accounts; the challenger's
promotion copies it), and the column keeps its name, its index and its meaning.

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

TABLES = ("leads", "challenger_leads", "accounts", "challenger_accounts")
INDEXES = {
    "leads": "CREATE INDEX leads_by_journey_phase ON leads (journey_phase, lead_id)",
    "accounts": "CREATE INDEX accounts_by_journey_phase ON accounts (journey_phase, account_id)",
}


def upgrade() -> None:
    for table in TABLES:
        # Dropping the generated column drops its index; the plain column is filled from
        # the same documents, then indexed again.
        op.execute(f"ALTER TABLE {table} DROP COLUMN journey_phase")
        op.execute(f"ALTER TABLE {table} ADD COLUMN journey_phase text")
        op.execute(
            f"UPDATE {table} SET journey_phase = scoring -> 'journey' ->> 'phase' "
            "WHERE scoring -> 'journey' ->> 'phase' IS NOT NULL"
        )
    for statement in INDEXES.values():
        op.execute(statement)


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN journey_phase")
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN journey_phase text "
            "GENERATED ALWAYS AS (scoring -> 'journey' ->> 'phase') STORED"
        )
    for statement in INDEXES.values():
        op.execute(statement)
