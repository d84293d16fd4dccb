"""Outbound endpoints: signed webhooks and CRM writers, their deliveries and attempts.

A delivery row is written in the same statement, so the same transaction, as the outbox row
of its record (outbox_store.enqueue joins the new records with the endpoints that want
them): a delivery is exactly as durable as the Kafka record. It keeps its own copy of the
record, since outbox rows are purged once published. Deliveries of one subject (lead or
account) go out in id order; `webhook_pending` finds each subject's first waiting one.
`crm_writes` keeps, per CRM endpoint and subject, the move number last written, so an older
record (a retry, a re-delivery) never overwrites a newer one.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhook_endpoints (
            id              text PRIMARY KEY,
            name            text NOT NULL,
            kind            text NOT NULL,
            url             text NOT NULL,
            secret          bytea NOT NULL,
            records         text[] NOT NULL,
            types           text[] NOT NULL DEFAULT '{}',
            stages          text[] NOT NULL DEFAULT '{}',
            paused          boolean NOT NULL DEFAULT false,
            retry_hours     float8 NOT NULL,
            rate_per_second float8 NOT NULL,
            mapping         jsonb,
            created_by      text NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id              bigserial PRIMARY KEY,
            endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            record_id       text NOT NULL,
            kind            text NOT NULL,
            subject         text NOT NULL,
            seq             integer NOT NULL,
            payload         bytea NOT NULL,
            state           text NOT NULL DEFAULT 'pending',
            attempts        integer NOT NULL DEFAULT 0,
            queued_at       timestamptz NOT NULL DEFAULT now(),
            retry_from      timestamptz NOT NULL DEFAULT now(),
            due_at          timestamptz NOT NULL DEFAULT now(),
            claimed_until   timestamptz,
            last_attempt_at timestamptz,
            delivered_at    timestamptz,
            last_status     integer,
            last_latency_ms float8,
            reason          text,
            response        text
        )
        """
    )
    op.execute(
        "CREATE INDEX webhook_pending ON webhook_deliveries (endpoint_id, subject, id) "
        "WHERE state = 'pending'"
    )
    op.execute("CREATE INDEX webhook_log ON webhook_deliveries (endpoint_id, id)")
    op.execute(
        "CREATE INDEX webhook_failed ON webhook_deliveries (endpoint_id, last_attempt_at) "
        "WHERE state = 'failed'"
    )
    op.execute(
        """
        CREATE TABLE crm_writes (
            endpoint_id text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            subject     text NOT NULL,
            seq         integer NOT NULL,
            PRIMARY KEY (endpoint_id, subject)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE crm_writes")
    op.execute("DROP TABLE webhook_deliveries")
    op.execute("DROP TABLE webhook_endpoints")
