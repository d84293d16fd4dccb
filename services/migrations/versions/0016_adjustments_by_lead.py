"""The audit entries of a lead's score adjustments, found by lead.

A lead's history lists the adjustments made to its scores (who, when, why) from the audit
log; this partial index keeps that a lookup however long the log grows.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX audit_log_lead_adjustments ON audit_log (target, id) "
        "WHERE action = 'lead.adjust'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX audit_log_lead_adjustments")
