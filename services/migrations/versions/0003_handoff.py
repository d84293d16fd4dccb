"""The sales handoff loop: follow-up deadlines, sales feedback, round-robin routing.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE handoffs (
    transition_id text PRIMARY KEY,
    lead_id       text NOT NULL,
    stage         text NOT NULL,
    owner         text NOT NULL,
    entered_at    timestamptz NOT NULL,
    respond_by    timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'open',
    answered_at   timestamptz,
    feedback_id   text,
    breached_at   timestamptz
);
CREATE INDEX handoffs_due ON handoffs (respond_by) WHERE status = 'open';
CREATE INDEX handoffs_open_lead ON handoffs (lead_id) WHERE status = 'open';
CREATE INDEX handoffs_entered ON handoffs (entered_at);
CREATE TABLE feedback (
    feedback_id   text PRIMARY KEY,
    lead_id       text NOT NULL,
    outcome       text NOT NULL,
    reason        text,
    given_by      text,
    at            timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    result        text NOT NULL,
    detail        text,
    transition_id text
);
CREATE INDEX feedback_at ON feedback (at);
CREATE TABLE routing_cursors (
    queue    text PRIMARY KEY,
    position bigint NOT NULL
);
CREATE INDEX transitions_occurred ON transitions (occurred_at)
"""


def upgrade() -> None:
    # asyncpg prepares each statement, so they go one at a time.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX transitions_occurred")
    op.execute("DROP TABLE routing_cursors, feedback, handoffs")
