"""A version per lead row, so a cached copy of a lead can be checked without reading it.

`leads.row_version` goes up by one on every write of the row (lead_store.save_leads; the
challenger's promotion). The event consumer keeps the leads it wrote last in memory
(services/pipeline/lead_cache.py) and, when it meets them again, asks the database only for
their versions: a copy whose version is still the stored one is used as it is, and any other
writer's change (HTTP, deadlines, re-scoring, another instance) shows as a newer version.
Every statement that writes a lead row must raise the version.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE leads ADD COLUMN row_version bigint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE challenger_leads ADD COLUMN row_version bigint NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE challenger_leads DROP COLUMN row_version")
    op.execute("ALTER TABLE leads DROP COLUMN row_version")
