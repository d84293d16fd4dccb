"""Several scores: adjustments found by lead, and the challenger's scores per transition.

A lead's history lists the adjustments made to its scores (who, when, why) from the audit
log; a partial index keeps that a lookup however long the log grows. The challenger's
transitions keep which scores qualified each move and every score's total (as the live
transitions' records do), for the outcome review per score.

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
    op.execute("ALTER TABLE challenger_transitions ADD COLUMN record jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE challenger_transitions DROP COLUMN record")
    op.execute("DROP INDEX audit_log_lead_adjustments")
