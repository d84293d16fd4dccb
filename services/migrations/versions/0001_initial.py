"""Leads, accounts, identity links, dedup, consumer offsets, transitions, outbox, rule sets.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


SCHEMA = """
        CREATE TABLE rulesets (
            version      integer PRIMARY KEY,
            name         text NOT NULL,
            document     jsonb NOT NULL,
            published_by text NOT NULL,
            comment      text,
            published_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE active_ruleset (
            id           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
            version      integer NOT NULL REFERENCES rulesets(version),
            activated_by text NOT NULL,
            activated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE leads (
            lead_id          text PRIMARY KEY,
            stage            text NOT NULL,
            stage_entered_at timestamptz,
            account_id       text,
            traits           jsonb NOT NULL DEFAULT '{}',
            fit              double precision NOT NULL DEFAULT 0,
            engagement       double precision NOT NULL DEFAULT 0,
            as_of            timestamptz,
            seq              integer NOT NULL DEFAULT 0,
            ruleset_version  integer NOT NULL DEFAULT 0,
            scoring          jsonb NOT NULL DEFAULT '{}',
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX leads_stage ON leads (stage);
        CREATE TABLE accounts (
            account_id text PRIMARY KEY,
            traits     jsonb NOT NULL DEFAULT '{}',
            version    integer NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE identity_links (
            alias_id  text PRIMARY KEY,
            lead_id   text NOT NULL,
            caused_by text,
            linked_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX identity_links_lead ON identity_links (lead_id);
        CREATE TABLE processed_events (
            raw_id       text NOT NULL,
            message_id   text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (raw_id, message_id)
        );
        CREATE TABLE consumer_offsets (
            topic       text NOT NULL,
            partition   integer NOT NULL,
            next_offset bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, partition)
        );
        CREATE TABLE transitions (
            transition_id   text PRIMARY KEY,
            lead_id         text NOT NULL,
            from_stage      text NOT NULL,
            to_stage        text NOT NULL,
            reason          text NOT NULL,
            rule_id         text,
            ruleset_version integer NOT NULL,
            caused_by       text,
            score_total     double precision NOT NULL,
            occurred_at     timestamptz NOT NULL,
            emitted_at      timestamptz NOT NULL
        );
        CREATE INDEX transitions_lead ON transitions (lead_id, occurred_at);
        CREATE INDEX transitions_to_stage ON transitions (to_stage, occurred_at);
        CREATE TABLE outbox (
            id         bigserial PRIMARY KEY,
            topic      text NOT NULL,
            key        bytea,
            value      bytea NOT NULL,
            headers    jsonb,
            record_id  text,
            created_at timestamptz NOT NULL DEFAULT now(),
            sent_at    timestamptz
        );
        CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL;
"""


def upgrade() -> None:
    # asyncpg prepares each statement, so they go one at a time.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute(
        "DROP TABLE outbox, transitions, consumer_offsets, processed_events, identity_links, "
        "accounts, leads, active_ruleset, rulesets"
    )
