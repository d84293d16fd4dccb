"""Rule sets keep the text their author published.

A rule set's comments are where sales and marketing wrote down why a rule exists; the
normalised JSON document (keys in the model's order, durations in seconds, comments gone)
is what the engine runs. `source` holds the YAML or JSON exactly as published, and the
version page, the editor, `leadscore rules show` and the diff show it. Versions published
before this migration have none and are shown from their document, as before.

Revision ID: 0021
Revises: 0020
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE rulesets ADD COLUMN source text")


def downgrade() -> None:
    op.execute("ALTER TABLE rulesets DROP COLUMN source")
