"""One round trip to lock and load a batch's working set: `leadscore_open_batch`.

A lead transaction used to lock and read in eight statements, each a round trip between the
service and PostgreSQL: the partitions' offset rows, the identity links, the leads' advisory
locks, the links again, the leads, the accounts' locks, the accounts, the dedup keys. A read
that must see what a lock protects has to be a later statement than the lock (a statement
sees the database as it was when it began), which is why they were separate. Inside a
volatile PL/pgSQL function in READ COMMITTED each statement takes a fresh snapshot too, so
the same steps in the same order run in one call (services/adapters/postgres/batch_read.py
reads its rows; services/pipeline/lead_transaction.py has the lock order they keep).

The rows come back in one result, each tagged by its kind:

  offset   a partition's row, locked: seq = partition, num = next offset, a = topic id
  link     an identity link read after the locks: a = alias, b = the lead it joined
  lead     a lead locked and read; traits and scoring are left out (unchanged = true) when
           the caller's cached copy is at the stored row_version
  account  an account read (locked when named, or when it is a locked lead's and accounts
           are scored)
  seen     a dedup key already stored: a = raw id, b = messageId

A link written by another transaction between the first links read and the locks points at
a lead whose lock was not taken in order: it is only tried, and when busy the function
raises SQLSTATE LS409, which the service turns into a retry of the whole transaction.

Advisory lock keys are `l:<lead id>` and `a:<account id>`, taken in byte order (COLLATE
"C", the order of Python's sorted() on the same strings, which every other lock taker uses).

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# Typed NULLs for the columns a row's kind does not use (RETURN QUERY must match the declared
# column types exactly; a bare NULL would be text).
LEAD_NULLS = "NULL::text, NULL::bigint, NULL::boolean"
STATE_NULLS_BUT_SEQ = (
    "NULL::text, NULL::timestamptz, NULL::text, NULL::text, NULL::float8, NULL::float8, "
    "NULL::timestamptz, "
)
ACCOUNT_NULLS = "NULL::integer, NULL::float8, NULL::text[]"

LINKS = """
CREATE FUNCTION leadscore_links(p_ids text[], p_max_hops integer)
RETURNS TABLE (alias_id text, lead_id text)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE chain(alias_id, lead_id, depth) AS (
        SELECT l.alias_id, l.lead_id, 1 FROM identity_links l WHERE l.alias_id = ANY (p_ids)
        UNION ALL
        SELECT l.alias_id, l.lead_id, c.depth + 1
        FROM identity_links l JOIN chain c ON l.alias_id = c.lead_id
        WHERE c.depth < p_max_hops
    )
    SELECT DISTINCT c.alias_id, c.lead_id FROM chain c
$$
"""

OPEN_BATCH = """
CREATE FUNCTION leadscore_open_batch(
    p_topic text,
    p_partitions integer[],
    p_leads text[],
    p_accounts text[],
    p_member_accounts boolean,
    p_known text[],
    p_known_versions bigint[],
    p_raw_ids text[],
    p_message_ids text[],
    p_max_hops integer
) RETURNS TABLE (
    kind text, a text, b text, num bigint,
    lead_id text, row_version bigint, unchanged boolean,
    stage text, stage_entered_at timestamptz, account_id text, traits text,
    fit double precision, engagement double precision, as_of timestamptz, seq integer,
    ruleset_version integer, scoring text,
    version integer, coverage double precision, roles_covered text[]
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_locked integer;
    v_wanted text[];
    v_alias text[];
    v_target text[];
    v_late text[];
    v_accounts text[];
    v_lock_accounts text[];
BEGIN
    -- Step 2 of the lock order: the partitions' offset rows, in partition order. A partition
    -- met for the first time gets its row first (once in the life of the database).
    IF cardinality(p_partitions) > 0 THEN
        PERFORM 1 FROM consumer_offsets o
        WHERE o.topic = p_topic AND o.partition = ANY (p_partitions)
        ORDER BY o.partition FOR UPDATE;
        GET DIAGNOSTICS v_locked = ROW_COUNT;
        IF v_locked < (SELECT count(DISTINCT p) FROM unnest(p_partitions) AS p) THEN
            INSERT INTO consumer_offsets (topic, partition, next_offset)
            SELECT p_topic, p, 0 FROM unnest(p_partitions) AS p ON CONFLICT DO NOTHING;
            PERFORM 1 FROM consumer_offsets o
            WHERE o.topic = p_topic AND o.partition = ANY (p_partitions)
            ORDER BY o.partition FOR UPDATE;
        END IF;
        RETURN QUERY
            SELECT 'offset', o.topic_id::text, NULL::text, o.next_offset, {lead_nulls},
                   {state_nulls_but_seq}o.partition, NULL::integer, NULL::text, {account_nulls}
            FROM consumer_offsets o
            WHERE o.topic = p_topic AND o.partition = ANY (p_partitions);
    END IF;

    -- Step 3a: the leads named and every lead they were merged into. Links never change once
    -- written, so reading them before locking gives every target but the newest ones.
    v_wanted := ARRAY(
        SELECT DISTINCT x FROM (
            SELECT unnest(p_leads)
            UNION ALL
            SELECT l.lead_id FROM leadscore_links(p_leads, p_max_hops) l
        ) AS t(x)
    );
    PERFORM pg_advisory_xact_lock(hashtextextended(k, 7))
    FROM unnest(ARRAY(SELECT 'l:' || x FROM unnest(v_wanted) AS x ORDER BY ('l:' || x) COLLATE "C"))
         WITH ORDINALITY AS t(k, n)
    ORDER BY n;
    SELECT coalesce(array_agg(l.alias_id), '{}'), coalesce(array_agg(l.lead_id), '{}')
    INTO v_alias, v_target
    FROM leadscore_links(p_leads, p_max_hops) l;
    v_late := ARRAY(SELECT DISTINCT t FROM unnest(v_target) AS t WHERE t <> ALL (v_wanted));
    IF cardinality(v_late) > 0 THEN
        -- Linked since the first read: waiting for these out of order could deadlock.
        IF NOT (SELECT bool_and(pg_try_advisory_xact_lock(hashtextextended('l:' || t, 7)))
                FROM unnest(v_late) AS t) THEN
            RAISE EXCEPTION 'leads linked meanwhile are busy: %', v_late[1:5]
                USING ERRCODE = 'LS409';
        END IF;
        v_wanted := v_wanted || v_late;
    END IF;
    RETURN QUERY
        SELECT 'link', x.alias, x.target, NULL::bigint, {lead_nulls},
               {state_nulls_but_seq}NULL::integer, NULL::integer, NULL::text, {account_nulls}
        FROM unnest(v_alias, v_target) AS x(alias, target);

    RETURN QUERY
        SELECT 'lead', NULL::text, NULL::text, NULL::bigint, l.lead_id, l.row_version,
               coalesce(l.row_version = k.v, false), l.stage, l.stage_entered_at, l.account_id,
               CASE WHEN l.row_version = k.v THEN NULL ELSE l.traits::text END,
               l.fit, l.engagement, l.as_of, l.seq, l.ruleset_version,
               CASE WHEN l.row_version = k.v THEN NULL ELSE l.scoring::text END,
               {account_nulls}
        FROM leads l LEFT JOIN unnest(p_known, p_known_versions) AS k(id, v) ON k.id = l.lead_id
        WHERE l.lead_id = ANY (v_wanted);

    -- Step 3b: accounts. Scored accounts change with every member's activity, so the
    -- accounts of the locked leads are locked too; every lead lock came first.
    v_accounts := ARRAY(
        SELECT DISTINCT x FROM (
            SELECT unnest(p_accounts)
            UNION ALL
            SELECT l.account_id FROM leads l
            WHERE l.lead_id = ANY (v_wanted) AND l.account_id IS NOT NULL
        ) AS t(x)
    );
    v_lock_accounts := CASE WHEN p_member_accounts THEN v_accounts ELSE p_accounts END;
    PERFORM pg_advisory_xact_lock(hashtextextended(k, 7))
    FROM unnest(ARRAY(
             SELECT d.k FROM (SELECT DISTINCT 'a:' || x AS k FROM unnest(v_lock_accounts) AS x) d
             ORDER BY d.k COLLATE "C"
         )) WITH ORDINALITY AS t(k, n)
    ORDER BY n;
    RETURN QUERY
        SELECT 'account', NULL::text, NULL::text, NULL::bigint, {lead_nulls},
               c.stage, c.stage_entered_at, c.account_id, c.traits::text, c.fit, c.engagement,
               c.as_of, c.seq,
               c.ruleset_version, c.scoring::text, c.version, c.coverage, c.roles_covered
        FROM accounts c WHERE c.account_id = ANY (v_accounts);

    -- The dedup keys belong to the leads locked above: checked under their locks.
    IF cardinality(p_raw_ids) > 0 THEN
        RETURN QUERY
            SELECT 'seen', k.r, k.m, NULL::bigint, {lead_nulls},
                   {state_nulls_but_seq}NULL::integer, NULL::integer, NULL::text, {account_nulls}
            FROM unnest(p_raw_ids, p_message_ids) AS k(r, m)
            WHERE EXISTS (SELECT 1 FROM lead_events e WHERE e.raw_id = k.r AND e.message_id = k.m)
               OR EXISTS (SELECT 1 FROM processed_events p
                          WHERE p.raw_id = k.r AND p.message_id = k.m);
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(LINKS)
    op.execute(
        OPEN_BATCH.replace("{lead_nulls}", LEAD_NULLS)
        .replace("{state_nulls_but_seq}", STATE_NULLS_BUT_SEQ)
        .replace("{account_nulls}", ACCOUNT_NULLS)
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION leadscore_open_batch")
    op.execute("DROP FUNCTION leadscore_links")
