"""Scored event history, background jobs and the audit log (rules administration).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE lead_events (
    id              bigserial PRIMARY KEY,
    lead_id         text NOT NULL,
    message_id      text NOT NULL,
    type            text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    event           jsonb NOT NULL,
    hits            jsonb NOT NULL DEFAULT '[]',
    points          double precision NOT NULL DEFAULT 0,
    ruleset_version integer NOT NULL,
    scored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lead_events_lead ON lead_events (lead_id, id);
CREATE INDEX lead_events_occurred ON lead_events (occurred_at);
CREATE TABLE jobs (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL,
    status      text NOT NULL,
    params      jsonb NOT NULL DEFAULT '{}',
    done        bigint NOT NULL DEFAULT 0,
    total       bigint,
    result      jsonb,
    error       text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE audit_log (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    target text,
    detail jsonb
);
CREATE INDEX leads_total ON leads ((fit + engagement));
ALTER TABLE transitions ADD COLUMN record jsonb
"""


def upgrade() -> None:
    # asyncpg prepares each statement, so they go one at a time.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("ALTER TABLE transitions DROP COLUMN record")
    op.execute("DROP INDEX leads_total")
    op.execute("DROP TABLE audit_log, jobs, lead_events")
