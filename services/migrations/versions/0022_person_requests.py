"""A person's data on request: erasure requests, the suppression list, and the indexes an
erasure deletes by.

`person_requests` keeps one row per request (erase, export, unsuppress): who asked, when, its
status and the rows removed per table. The identifier the person was named by is held only
while an erasure waits to be carried out (`identifier`, cleared when it is done or failed);
afterwards the row says only what kind of id it was.

`suppressed_keys` holds HMAC-SHA256 keyed hashes of an erased person's ids and e-mail
address (services/adapters/secrets.py has the key), never the clear values, with the
request that suppressed them (unsuppress removes a request's keys together).

`leadscore_open_batch` (migration 0020) gains one argument, the keyed hashes of the
batch's ids and addresses, and returns the suppressed ones as rows of kind `suppressed`
(a = the hash in hex). They are read after the leads' locks, so a batch that waited for an
erasure's lock sees its suppression.

Revision ID: 0022
Revises: 0021
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def _open_batch_0020() -> object:
    """Migration 0020's module (file names of migrations are not importable names)."""
    path = Path(__file__).with_name("0020_open_batch.py")
    spec = importlib.util.spec_from_file_location("migration_0020", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD_SIGNATURE = (
    "leadscore_open_batch(text, integer[], text[], text[], boolean, text[], bigint[], "
    "text[], text[], integer)"
)

SUPPRESSED = """
    -- Suppressed ids and addresses, read after the locks (an erasure holds the same ones).
    IF cardinality(p_suppression) > 0 THEN
        RETURN QUERY
            SELECT 'suppressed', encode(s.key, 'hex'), NULL::text, NULL::bigint, {lead_nulls},
                   {state_nulls_but_seq}NULL::integer, NULL::integer, NULL::text, {account_nulls}
            FROM suppressed_keys s WHERE s.key = ANY (p_suppression);
    END IF;
END
$$
"""


def _function(module: object, *, suppression: bool) -> str:
    text: str = module.OPEN_BATCH  # type: ignore[attr-defined]
    if suppression:
        text = text.replace(
            "    p_max_hops integer\n) RETURNS",
            "    p_max_hops integer,\n    p_suppression bytea[]\n) RETURNS",
        )
        head, _, _ = text.rpartition("END\n$$")
        text = head + SUPPRESSED.lstrip("\n")
    return (
        text.replace("{lead_nulls}", module.LEAD_NULLS)  # type: ignore[attr-defined]
        .replace("{state_nulls_but_seq}", module.STATE_NULLS_BUT_SEQ)  # type: ignore[attr-defined]
        .replace("{account_nulls}", module.ACCOUNT_NULLS)  # type: ignore[attr-defined]
    )


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE person_requests (
            id           uuid PRIMARY KEY,
            kind         text NOT NULL CHECK (kind IN ('erase', 'export', 'unsuppress')),
            status       text NOT NULL CHECK (status IN ('received', 'done', 'failed')),
            found_by     text NOT NULL,
            identifier   text,
            suppress     boolean NOT NULL DEFAULT false,
            requested_by text NOT NULL,
            requested_at timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz,
            leads        integer,
            removed      jsonb,
            failure      text,
            CHECK (status = 'received' OR identifier IS NULL)
        )
        """
    )
    op.execute(
        "CREATE INDEX person_requests_waiting ON person_requests (requested_at, id) "
        "WHERE status = 'received'"
    )
    op.execute("CREATE INDEX person_requests_by_time ON person_requests (requested_at DESC, id)")
    op.execute(
        """
        CREATE TABLE suppressed_keys (
            key           bytea PRIMARY KEY,
            request_id    uuid NOT NULL REFERENCES person_requests (id),
            suppressed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX suppressed_keys_by_request ON suppressed_keys (request_id)")
    # What an erasure deletes by the lead's id, where no index led there before.
    op.execute("CREATE INDEX handoffs_by_lead ON handoffs (lead_id)")
    op.execute("CREATE INDEX feedback_by_lead ON feedback (lead_id)")
    op.execute("CREATE INDEX challenger_transitions_by_lead ON challenger_transitions (lead_id)")
    op.execute("CREATE INDEX webhook_deliveries_by_subject ON webhook_deliveries (subject)")
    op.execute("CREATE INDEX crm_writes_by_subject ON crm_writes (subject)")
    op.execute("CREATE INDEX outbox_by_key ON outbox (key)")
    module = _open_batch_0020()
    op.execute(f"DROP FUNCTION {OLD_SIGNATURE}")
    op.execute(_function(module, suppression=True))


def downgrade() -> None:
    module = _open_batch_0020()
    op.execute(
        "DROP FUNCTION leadscore_open_batch(text, integer[], text[], text[], boolean, text[], "
        "bigint[], text[], text[], integer, bytea[])"
    )
    op.execute(_function(module, suppression=False))
    for index in (
        "outbox_by_key",
        "crm_writes_by_subject",
        "webhook_deliveries_by_subject",
        "challenger_transitions_by_lead",
        "feedback_by_lead",
        "handoffs_by_lead",
    ):
        op.execute(f"DROP INDEX {index}")
    op.execute("DROP TABLE suppressed_keys")
    op.execute("DROP TABLE person_requests")
