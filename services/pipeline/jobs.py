"""Background jobs (re-scoring, impact reports): a row in `jobs` with progress, and a task."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from services.adapters.postgres import job_store
from services.adapters.postgres.db import connection

log = logging.getLogger(__name__)
# Progress is written at most this often: a job over a million leads should not spend its
# time updating its own row.
PROGRESS_INTERVAL = 0.5


class JobFailed(Exception):
    """A job that cannot go on, with a reason for the job's record."""


class JobContext:
    def __init__(self, db: AsyncEngine, job_id: str) -> None:
        self.db = db
        self.id = job_id
        self.done = 0
        self.total: int | None = None
        self._written = 0.0

    async def _write(self) -> None:
        async with connection(self.db) as pg:
            await job_store.save_progress(pg, self.id, self.done, self.total)
        self._written = time.monotonic()

    async def set_total(self, total: int) -> None:
        self.total = total
        await self._write()

    async def advance(self, count: int) -> None:
        self.done += count
        if time.monotonic() - self._written >= PROGRESS_INTERVAL:
            await self._write()


Work = Callable[[JobContext], Awaitable[dict[str, Any]]]


class Jobs:
    """Starts jobs in this process and records how they go."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, kind: str, params: dict[str, Any], *, by: str, work: Work) -> str:
        job_id = str(uuid.uuid4())
        async with connection(self.db) as pg:
            await job_store.create_job(pg, job_id, kind, params, by=by)
        self.tasks[job_id] = asyncio.create_task(self._run(job_id, work), name=f"job-{kind}")
        return job_id

    async def _run(self, job_id: str, work: Work) -> None:
        ctx = JobContext(self.db, job_id)
        status, result, error = "succeeded", None, None
        try:
            result = await work(ctx)
        except asyncio.CancelledError:
            status, error = "failed", "interrupted: the service stopped"
        except JobFailed as exc:
            status, error = "failed", str(exc)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        async with connection(self.db) as pg:
            await job_store.finish_job(
                pg,
                job_id,
                status=status,
                result=result,
                error=error,
                done=ctx.done,
                total=ctx.total,
            )
        self.tasks.pop(job_id, None)

    async def wait(self, job_id: str) -> None:
        task = self.tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def get_job(db: AsyncEngine, job_id: str) -> dict[str, Any] | None:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    async with connection(db) as pg:
        row = await job_store.job(pg, key)
    if row is None:
        return None
    job = dict(row)
    job["params"] = orjson.loads(job["params"])
    job["result"] = orjson.loads(job["result"]) if job["result"] else None
    total = job["total"]
    job["progress"] = {
        "done": job.pop("done"),
        "total": total,
        "fraction": round(row["done"] / total, 4) if total else None,
    }
    job.pop("total")
    return job
