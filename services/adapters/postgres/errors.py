"""What the database's errors mean to the service: one place that sorts asyncpg's exceptions.

The loops wait out UNAVAILABLE with back-off (HTTP answers 503); a batch the database REFUSED
is split until the refused records are alone (they go to the DLQ); CONFLICTS roll back and try
again; a request whose values the database cannot store (BAD_VALUE) gets a 4xx.
"""

from __future__ import annotations

import asyncpg

# The database (or the network to it) is away: waited out with back-off by the loops, 503 over
# HTTP. Anything else the database says is about the request or the data.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)

# A value the database cannot store (NUL in text, a malformed number or date).
BAD_VALUE = (asyncpg.DataError,)

# The database refuses what the records contain (a value it cannot store, a limit exceeded):
# retrying the same records fails the same way, so the batch is split to find them.
REFUSED = (*BAD_VALUE, asyncpg.ProgramLimitExceededError)

# Lock conflicts resolve by rolling back and trying again (see the lock order in
# services/pipeline/lead_transaction.py).
CONFLICTS = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.UniqueViolationError,
)

# Any other error the database reports (permissions, a missing table): not the data's fault.
DATABASE_ERROR = asyncpg.PostgresError
