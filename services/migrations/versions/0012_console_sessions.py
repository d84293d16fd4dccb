"""Console sessions kept in the database, so signing out, an idle timeout and an admin can end
one, and a restart does not.

The cookie holds a random secret; the row is keyed by its SHA-256 (`id`), so neither the
table nor an admin's list of sessions holds anything a browser could present. `token_hash` is
the configured hash of the token that signed in: a session whose token is no longer
configured (or now has another role) ends at its next request.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in _statements(
        """
        CREATE TABLE console_sessions (
            id           text PRIMARY KEY,
            token_name   text NOT NULL,
            role         text NOT NULL,
            token_hash   text NOT NULL,
            csrf         text NOT NULL,
            client       text,
            user_agent   text,
            created_at   timestamptz NOT NULL,
            last_seen_at timestamptz NOT NULL
        );
        CREATE INDEX console_sessions_by_token ON console_sessions (token_name, created_at)
        """
    ):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE console_sessions")


def _statements(script: str) -> list[str]:
    """One statement per call: asyncpg prepares each, and a prepared statement is one."""
    return [part.strip() for part in script.split(";") if part.strip()]
