"""The buyer journey: every move between phases, and each lead's and account's phase.

`journey_moves` keeps each move of a lead or an account (numbered in the subject's own
sequence, so a replayed event writes the same row and ON CONFLICT keeps one), with the
content seen in the phase it left: the journey report's moves, times in phase, channel mix
and next steps are read from it. Its index on `occurred_at` keeps a report's window a range
scan however long the history grows.

The phase itself lives in the scoring document; a stored generated column makes it a
column the lists filter and the report counts on, without a second place to write it
(the challenger's copies of the tables get it too).

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("leads", "challenger_leads", "accounts", "challenger_accounts")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE journey_moves (
            subject         text NOT NULL,
            subject_id      text NOT NULL,
            seq             integer NOT NULL,
            from_phase      text,
            to_phase        text,  -- null: an account left without a phase
            reason          text NOT NULL,
            rule_id         text,
            caused_by       text,
            content         text,
            channel         text,
            seen            jsonb NOT NULL DEFAULT '[]',
            occurred_at     timestamptz NOT NULL,
            ruleset_version integer NOT NULL,
            PRIMARY KEY (subject, subject_id, seq)
        )
        """
    )
    op.execute("CREATE INDEX journey_moves_by_time ON journey_moves (occurred_at)")
    for table in TABLES:
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN journey_phase text "
            "GENERATED ALWAYS AS (scoring -> 'journey' ->> 'phase') STORED"
        )
    op.execute("CREATE INDEX leads_by_journey_phase ON leads (journey_phase, lead_id)")
    op.execute("CREATE INDEX accounts_by_journey_phase ON accounts (journey_phase, account_id)")


def downgrade() -> None:
    op.execute("DROP INDEX accounts_by_journey_phase")
    op.execute("DROP INDEX leads_by_journey_phase")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN journey_phase")
    op.execute("DROP TABLE journey_moves")
