"""A scored event whose points no longer count (its lead was recycled since: engagement
starts again from zero) is marked, so a lead's history adds up to its score.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lead_events ADD COLUMN superseded boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE lead_events DROP COLUMN superseded")
