"""Lead lists ordered by score (how sales development reps work a queue): an index on the
total with the lead id as the tie-breaker, for stable keyset pages.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX leads_by_score ON leads ((fit + engagement) DESC, lead_id)")


def downgrade() -> None:
    op.execute("DROP INDEX leads_by_score")
