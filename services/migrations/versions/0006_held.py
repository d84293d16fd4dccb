"""Each scored event keeps why its lead was held after it (an exclusion, a missing
requirement), so a lead's history shows when and why it stopped moving.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE lead_events ADD COLUMN held text")


def downgrade() -> None:
    op.execute("ALTER TABLE lead_events DROP COLUMN held")
