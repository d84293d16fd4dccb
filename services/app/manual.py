"""Running a move a person makes by hand (services/pipeline/manual_moves.py) in a lead
transaction, with its refusals in the words and statuses the API and the console answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.app.container import Container
from services.app.errors import ApiError
from services.pipeline import manual_moves
from services.pipeline.lead_transaction import LeadTransaction

Result = TypeVar("Result")


async def run_manual(
    container: Container,
    move: Callable[[LeadTransaction], Awaitable[Result]],
    *,
    writer: str,
) -> Result:
    """`move` in its own lead transaction: 404 for what does not exist, 409 for a move the
    lifecycle (or the rule set) does not allow."""

    async def work(tx: LeadTransaction) -> Result:
        try:
            return await move(tx)
        except manual_moves.NotFound as exc:
            raise ApiError(404, exc.code, exc.message) from exc
        except manual_moves.Refused as exc:
            raise ApiError(409, exc.code, exc.message) from exc

    return await container.writer.run(work, writer=writer)
