"""A challenger version: scored on live traffic next to the active one, into its own state.

`challenger` holds the one version being tried (at most one row). Its state per lead and per
account has the live tables' columns; its stage changes are kept (never published) for the
outcome report, and each scored event's hits under it in `lead_events.challenger_hits`.
`warmed_at` says every lead that existed when it started has been replayed under it, so
activating it needs no replay.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in _statements(
        """
        CREATE TABLE challenger (
            id         smallint PRIMARY KEY CHECK (id = 1),
            version    integer NOT NULL REFERENCES rulesets (version),
            started_by text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            warmed_at  timestamptz
        );
        CREATE TABLE challenger_leads (LIKE leads INCLUDING DEFAULTS);
        ALTER TABLE challenger_leads ADD PRIMARY KEY (lead_id);
        CREATE TABLE challenger_accounts (LIKE accounts INCLUDING DEFAULTS);
        ALTER TABLE challenger_accounts ADD PRIMARY KEY (account_id);
        CREATE TABLE challenger_transitions (
            transition_id   text PRIMARY KEY,
            lead_id         text NOT NULL,
            from_stage      text NOT NULL,
            to_stage        text NOT NULL,
            reason          text NOT NULL,
            rule_id         text,
            ruleset_version integer NOT NULL,
            score_total     double precision NOT NULL,
            occurred_at     timestamptz NOT NULL
        );
        CREATE INDEX challenger_transitions_by_time
            ON challenger_transitions (ruleset_version, occurred_at);
        CREATE TABLE challenger_account_transitions (
            transition_id   text PRIMARY KEY,
            account_id      text NOT NULL,
            from_stage      text NOT NULL,
            to_stage        text NOT NULL,
            reason          text NOT NULL,
            ruleset_version integer NOT NULL,
            score_total     double precision NOT NULL,
            occurred_at     timestamptz NOT NULL
        );
        CREATE INDEX challenger_account_transitions_by_time
            ON challenger_account_transitions (ruleset_version, occurred_at);
        ALTER TABLE lead_events ADD COLUMN challenger_hits json
        """
    ):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(
        """
        ALTER TABLE lead_events DROP COLUMN challenger_hits;
        DROP TABLE challenger_account_transitions;
        DROP TABLE challenger_transitions;
        DROP TABLE challenger_accounts;
        DROP TABLE challenger_leads;
        DROP TABLE challenger
        """
    ):
        op.execute(statement)


def _statements(script: str) -> list[str]:
    """One statement per call: asyncpg prepares each, and a prepared statement is one."""
    return [part.strip() for part in script.split(";") if part.strip()]
