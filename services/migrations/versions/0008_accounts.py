"""Accounts are scored: their stage, score parts and committee coverage, and the account
transitions (the history behind `account-status-transitions`).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in _statements(
        """
        ALTER TABLE accounts
            ADD COLUMN stage text NOT NULL DEFAULT 'target',
            ADD COLUMN stage_entered_at timestamptz,
            ADD COLUMN seq integer NOT NULL DEFAULT 0,
            ADD COLUMN as_of timestamptz,
            ADD COLUMN fit double precision NOT NULL DEFAULT 0,
            ADD COLUMN engagement double precision NOT NULL DEFAULT 0,
            ADD COLUMN coverage double precision NOT NULL DEFAULT 0,
            ADD COLUMN score double precision NOT NULL DEFAULT 0,
            ADD COLUMN roles_covered text[] NOT NULL DEFAULT '{}',
            ADD COLUMN member_count integer NOT NULL DEFAULT 0,
            ADD COLUMN ruleset_version integer NOT NULL DEFAULT 0,
            ADD COLUMN scoring jsonb NOT NULL DEFAULT '{}';
        CREATE INDEX accounts_by_score ON accounts (score DESC, account_id);
        CREATE INDEX accounts_by_stage ON accounts (stage, score DESC, account_id);
        CREATE TABLE account_transitions (
            transition_id   text PRIMARY KEY,
            account_id      text NOT NULL,
            seq             integer NOT NULL,
            from_stage      text NOT NULL,
            to_stage        text NOT NULL,
            reason          text NOT NULL,
            ruleset_version integer NOT NULL,
            score_total     double precision NOT NULL,
            occurred_at     timestamptz NOT NULL,
            emitted_at      timestamptz NOT NULL,
            record          jsonb NOT NULL
        );
        CREATE INDEX account_transitions_by_account ON account_transitions (account_id, seq);
        CREATE INDEX account_transitions_by_time ON account_transitions (occurred_at);
        """
    ):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(
        """
        DROP TABLE account_transitions;
        DROP INDEX accounts_by_stage;
        DROP INDEX accounts_by_score;
        ALTER TABLE accounts
            DROP COLUMN stage, DROP COLUMN stage_entered_at, DROP COLUMN seq,
            DROP COLUMN as_of, DROP COLUMN fit, DROP COLUMN engagement, DROP COLUMN coverage,
            DROP COLUMN score, DROP COLUMN roles_covered, DROP COLUMN member_count,
            DROP COLUMN ruleset_version, DROP COLUMN scoring;
        """
    ):
        op.execute(statement)


def _statements(script: str) -> list[str]:
    """One statement per call: asyncpg prepares each, and a prepared statement is one."""
    return [part.strip() for part in script.split(";") if part.strip()]
