"""A lead transaction's locks and reads in one round trip (migration 0020's
`leadscore_open_batch`, with migration 0022's suppression list): the partitions' offset
rows, the identity links, the leads and their accounts, the dedup keys already stored, and
which of the batch's people are suppressed.

Every function here runs inside the caller's transaction and never commits: a batch's state
changes, dedup keys, outbox rows and partition offsets commit together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from scoring_service.pipeline import MAX_LINK_HOPS
from scoring_service.state import Account, LeadState
from services.adapters.postgres.lead_store import account_from_row, lead_from_row

# The SQLSTATE the function raises when a lead linked meanwhile is locked by another
# transaction (the caller starts its transaction again).
LINK_RACED = "LS409"


@dataclass(slots=True)
class BatchRead:
    """What one call locked and read."""

    # Partition -> (next offset stored, the topic id of the log it belongs to).
    offsets: dict[int, tuple[int, uuid.UUID | None]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    leads: dict[str, LeadState] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    # The leads whose copies the caller gave were still the stored ones (used as they are).
    reused: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    # The suppression keys asked about that are on the list (scoring_service/suppression.py).
    suppressed: set[bytes] = field(default_factory=set)


async def open_batch(
    pg: asyncpg.Connection,
    *,
    lead_ids: Collection[str],
    account_ids: Collection[str] = (),
    member_accounts: bool,
    known: Mapping[str, tuple[int, LeadState]] | None = None,
    topic: str = "",
    partitions: Sequence[int] = (),
    keys: Sequence[tuple[str, str]] = (),
    suppression: Sequence[bytes] = (),
) -> BatchRead:
    """Lock the partitions' offset rows (when `partitions`), the leads named and the leads
    they joined, then the accounts (those named, and with `member_accounts` the locked leads'
    accounts), and read them all with the dedup `keys` (raw id, messageId) already stored
    and the `suppression` keys on the suppression list.

    `known` holds the caller's copies (row version, state) of some leads: a copy whose
    version is still the stored one is used as it is. Raises asyncpg.PostgresError with
    sqlstate LINK_RACED when a lead linked meanwhile is busy."""
    known = known or {}
    known_ids = list(known)
    rows = await pg.fetch(
        "SELECT * FROM leadscore_open_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        topic,
        list(partitions),
        list(lead_ids),
        list(account_ids),
        member_accounts,
        known_ids,
        [known[i][0] for i in known_ids],
        [k[0] for k in keys],
        [k[1] for k in keys],
        MAX_LINK_HOPS,
        list(suppression),
    )
    read = BatchRead()
    for row in rows:
        kind = row["kind"]
        if kind == "lead":
            lead_id = row["lead_id"]
            read.versions[lead_id] = row["row_version"]
            if row["unchanged"]:
                read.leads[lead_id] = known[lead_id][1]
                read.reused += 1
            else:
                read.leads[lead_id] = lead_from_row(row)
        elif kind == "account":
            account = account_from_row(row)
            read.accounts[account.account_id] = account
        elif kind == "link":
            read.links[row["a"]] = row["b"]
        elif kind == "seen":
            read.seen.add((row["a"], row["b"]))
        elif kind == "suppressed":
            read.suppressed.add(bytes.fromhex(row["a"]))
        elif kind == "offset":
            topic_id = row["a"]
            read.offsets[row["seq"]] = (row["num"], uuid.UUID(topic_id) if topic_id else None)
    return read
