"""The dispatcher: delivers queued records to webhook endpoints and CRM writers.

Deliveries were queued in the writer's transaction (outbox_store.enqueue), so nothing a
commit made is missed. Each endpoint is served by its own task: a slow or dead endpoint
holds up nothing but itself, and never the Kafka relay. A task claims the first waiting
delivery of each lead or account (one subject's records go out in order), sends them
(several subjects at once, at most the endpoint's rate), and records each outcome:
delivered; due again after exponential back-off with jitter (or the answer's Retry-After);
or, past the endpoint's retry window, set aside as failed with the reason, until an admin
re-delivers it. A claim is a lease: an instance killed mid-delivery leaves it to expire, and
the record goes out again under the same webhook-id (at least once, as Kafka's output).

CRM writers batch deliveries per request within the vendor's limit, and skip a record older
than the newest move already written for its lead or account (a retry or a re-delivery
never moves the CRM record backwards). An erasure is a delete of the record the CRM holds
under the lead's id, one per request; a CRM that no longer holds it (404) counts as done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import orjson
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.webhooks import EndpointSettings
from services.adapters import outbound
from services.adapters.postgres import webhook_store
from services.adapters.postgres.db import Row, connection, transaction
from services.adapters.postgres.errors import UNAVAILABLE
from services.adapters.secrets import SecretsUnreadable, Vault
from services.metrics import Metrics
from services.outputs import ERASURES
from services.settings import Settings
from stage_router import deliveries

log = logging.getLogger(__name__)

# Claims last this much longer than a request may take.
LEASE_MARGIN_SECONDS = 30.0
GAUGES_EVERY_SECONDS = 5.0
PURGE_EVERY_SECONDS = 60.0
PURGE_CHUNK = 10_000
# How soon a pause or a deletion made on another instance stops this one's calls.
HALT_CHECK_SECONDS = 0.5
USER_AGENT = "leadscore-webhooks/1"


class Pacer:
    """At most `rate` request starts a second (per endpoint and instance)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self.next_at)
        self.next_at = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class Dispatcher:
    def __init__(
        self,
        *,
        settings: Settings,
        db: AsyncEngine,
        metrics: Metrics,
        vault: Vault,
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.vault = vault
        self.wake = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # One HTTP client per endpoint, each with its own connections (at most
        # `webhook_concurrency`): an endpoint that never answers can fill only its own pool,
        # so a healthy one never waits for a connection behind it.
        self.clients: dict[str, httpx.AsyncClient] = {}
        # DNS lookups block a thread for as long as a dead name server makes them wait: each
        # endpoint resolves its host once per round, on threads of the dispatcher's own (one
        # per endpoint at most), so neither one endpoint's lookups nor the rest of the
        # service's thread work can hold up another's.
        self.dns = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.webhook_max_endpoints, thread_name_prefix="webhook-dns"
        )
        self._gauges_at = 0.0
        self._purged_at = 0.0

    def notify(self) -> None:
        """Called after each committed batch: deliveries may be waiting."""
        self.wake.set()

    def halt(self, endpoint_id: str) -> None:
        """Stop an endpoint's deliveries now (paused or deleted): its task and the calls in
        flight are cancelled, its claims given back unattempted. Other instances notice
        within `HALT_CHECK_SECONDS` (watch_halted)."""
        task = self.tasks.pop(endpoint_id, None)
        if task is not None and not task.done():
            task.cancel()
        client = self.clients.pop(endpoint_id, None)
        if client is not None:
            asyncio.get_running_loop().create_task(client.aclose())

    def client_for(self, endpoint_id: str) -> httpx.AsyncClient:
        client = self.clients.get(endpoint_id)
        if client is None:
            concurrency = self.settings.webhook_concurrency
            client = self.clients[endpoint_id] = httpx.AsyncClient(
                headers={"user-agent": USER_AGENT},
                trust_env=False,
                follow_redirects=False,
                limits=httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                ),
            )
        return client

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self.watch_halted(stop), name="webhooks:halted")
        try:
            while not stop.is_set():
                try:
                    await self.start_due(stop)
                    await self.housekeeping()
                except UNAVAILABLE as exc:
                    log.warning("webhook dispatcher: database unavailable (%s)", exc)
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.webhook_poll_seconds):
                        waits = {asyncio.ensure_future(self.wake.wait())}
                        waits.add(asyncio.ensure_future(stop.wait()))
                        try:
                            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            for waiting in waits:
                                waiting.cancel()
        finally:
            watcher.cancel()
            # Requests in flight get their timeout to finish; their outcome is recorded.
            if self.tasks:
                await asyncio.wait(
                    list(self.tasks.values()), timeout=self.settings.webhook_timeout_seconds + 1
                )
                for task in self.tasks.values():
                    task.cancel()
            for client in self.clients.values():
                await client.aclose()
            self.clients.clear()
            self.dns.shutdown(wait=False, cancel_futures=True)

    async def watch_halted(self, stop: asyncio.Event) -> None:
        """Halt the tasks of endpoints paused or deleted on any instance, within
        HALT_CHECK_SECONDS of the change (one small query, only while tasks run)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HALT_CHECK_SECONDS)
            running = [i for i, task in self.tasks.items() if not task.done()]
            if not running:
                continue
            try:
                async with connection(self.db) as pg:
                    live = await webhook_store.unpaused(pg, running)
            except UNAVAILABLE:
                continue  # the dispatcher's own loop says so
            for endpoint_id in set(running) - live:
                log.info("webhook %s: paused or deleted; its calls in flight stop", endpoint_id)
                self.halt(endpoint_id)

    async def start_due(self, stop: asyncio.Event) -> None:
        """A task for every endpoint with something due that has none running."""
        async with connection(self.db) as pg:
            due = await webhook_store.due_endpoints(pg)
        for endpoint_id in due:
            running = self.tasks.get(endpoint_id)
            if running is None or running.done():
                self.tasks[endpoint_id] = asyncio.create_task(
                    self.serve(endpoint_id, stop), name=f"webhook:{endpoint_id}"
                )

    async def serve(self, endpoint_id: str, stop: asyncio.Event) -> None:
        """Deliver an endpoint's due deliveries until none is left or the service stops."""
        # Deliveries this task holds claims on, given back if it is halted.
        in_hand: set[int] = set()
        try:
            async with connection(self.db) as pg:
                row = await webhook_store.endpoint_with_secret(pg, endpoint_id)
            if row is None or row["paused"]:
                return
            try:
                endpoint = EndpointView(row, self.vault)
            except EndpointBroken as exc:
                await self.set_aside_all(endpoint_id, str(exc))
                return
            pacer = Pacer(endpoint.rate)
            while not stop.is_set():
                claimed = await self.claim(endpoint)
                if not claimed:
                    return
                in_hand.update(row["id"] for row in claimed)
                await self.deliver(endpoint, claimed, pacer)
                in_hand.clear()
        except asyncio.CancelledError:
            # Halted (paused or deleted): give the claims back unattempted, so that they go
            # out as soon as the endpoint is resumed rather than when their lease runs out.
            if in_hand:
                with contextlib.suppress(*UNAVAILABLE):
                    await asyncio.shield(self.release(sorted(in_hand)))
            raise
        except UNAVAILABLE as exc:
            log.warning("webhook %s: database unavailable (%s)", endpoint_id, exc)
        except SecretsUnreadable as exc:
            log.error("webhook %s: %s; its deliveries wait", endpoint_id, exc)
        except Exception:
            log.exception("webhook %s: delivery round failed", endpoint_id)

    async def release(self, ids: list[int]) -> None:
        async with transaction(self.db) as pg:
            await webhook_store.release(pg, ids)

    async def set_aside_all(self, endpoint_id: str, reason: str) -> None:
        """An endpoint whose own configuration cannot deliver (stored before a check that
        now refuses it): every due delivery is set aside with the reason, where the log,
        the failed-deliveries gauge and its alert show it; fixing the endpoint and
        re-delivering sends them."""
        log.error("webhook %s: %s; its due deliveries are set aside", endpoint_id, reason)
        async with transaction(self.db) as pg:
            count = await webhook_store.set_aside_due(pg, endpoint_id, f"configuration: {reason}")
        self.metrics.webhook_deliveries.labels(endpoint_id, "failed").inc(count)

    async def claim(self, endpoint: EndpointView) -> list[Row]:
        limit = self.settings.webhook_concurrency * deliveries.BATCH_LIMITS[endpoint.kind]
        lease = self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
        async with transaction(self.db) as pg:
            return await webhook_store.claim_heads(pg, endpoint.id, limit, lease)

    async def deliver(self, endpoint: EndpointView, claimed: Sequence[Row], pacer: Pacer) -> None:
        if endpoint.kind == "webhook":
            groups = [[row] for row in claimed]
            skipped: list[dict[str, Any]] = []
        else:
            groups, skipped = await self.crm_groups(endpoint, claimed)
        limit = asyncio.Semaphore(self.settings.webhook_concurrency)
        address = await self.address_of(endpoint) if groups else None

        async def one(group: list[Row]) -> list[dict[str, Any]]:
            async with limit:
                await pacer.wait()
                return await self.attempt(endpoint, group, address)

        outcomes = [o for batch in await asyncio.gather(*map(one, groups)) for o in batch]
        outcomes.extend(skipped)
        async with transaction(self.db) as pg:
            await webhook_store.record_outcomes(pg, outcomes)
            if endpoint.kind != "webhook":
                written: dict[str, int] = {}
                for row, outcome in zip(
                    [r for g in groups for r in g], outcomes[: sum(map(len, groups))], strict=True
                ):
                    if outcome["state"] == "delivered":
                        written[row["subject"]] = max(written.get(row["subject"], 0), row["seq"])
                await webhook_store.note_written(pg, endpoint.id, written)
        for outcome in outcomes:
            if outcome["result"] is not None:
                self.metrics.webhook_deliveries.labels(endpoint.id, outcome["result"]).inc()

    async def crm_groups(
        self, endpoint: EndpointView, claimed: Sequence[Row]
    ) -> tuple[list[list[Row]], list[dict[str, Any]]]:
        """Batches of at most the vendor's limit, without the records older than what the
        CRM already has (outcome `skipped`) or with nothing to identify them by. An
        erasure is a request of its own (a delete), after every record before it."""
        async with connection(self.db) as pg:
            newest = await webhook_store.newest_written(
                pg, endpoint.id, {r["subject"] for r in claimed}
            )
        keep: list[Row] = []
        erasures: list[list[Row]] = []
        later: list[dict[str, Any]] = []
        identities: set[str] = set()
        for row in claimed:
            record = orjson.loads(row["payload"])
            key = deliveries.identity(record, endpoint.mapping["id_from"])
            if row["kind"] == ERASURES.effect:
                if key is not None:
                    erasures.append([row])
                    continue
                reason = (
                    "an erasure names the lead by its id; this writer finds records by "
                    f"{endpoint.mapping['id_from']}"
                )
            elif row["seq"] < newest.get(row["subject"], -1):
                reason = f"older than move {newest[row['subject']]} already written"
            elif key is None:
                reason = f"the record has no {endpoint.mapping['id_from']} to upsert by"
            elif key in identities:
                # Two leads with one email, say: one CRM record, written once per request.
                later.append({"id": row["id"], "state": "pending", "tried": 0, "result": None})
                continue
            else:
                identities.add(key)
                keep.append(row)
                continue
            later.append(
                {
                    "id": row["id"],
                    "state": "skipped",
                    "tried": 0,
                    "reason": reason,
                    "result": "skipped",
                }
            )
        size = deliveries.BATCH_LIMITS[endpoint.kind]
        return [keep[i : i + size] for i in range(0, len(keep), size)] + erasures, later

    async def address_of(self, endpoint: EndpointView) -> str | outbound.Refused:
        """The checked address this round's requests go to, or why there is none."""
        settings = self.settings
        loop = asyncio.get_running_loop()

        async def lookup(host: str, port: int) -> list[tuple[Any, ...]]:
            query = partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            return await loop.run_in_executor(self.dns, query)

        try:
            spot = outbound.target(
                endpoint.url,
                allow_http=settings.outbound_allow_http,
                allow_private=settings.outbound_allow_private,
            )
            return await outbound.resolve(
                spot, allow_private=settings.outbound_allow_private, lookup=lookup
            )
        except outbound.Refused as exc:
            return exc

    async def attempt(
        self,
        endpoint: EndpointView,
        group: Sequence[Row],
        address: str | outbound.Refused | None = None,
    ) -> list[dict[str, Any]]:
        """One request for `group` (to `address`, resolved for the round); an outcome per
        delivery, in the group's order."""
        if isinstance(address, outbound.Refused):
            return [self.again(endpoint, row, reason=f"refused: {address}") for row in group]
        try:
            method, url, headers, body = endpoint.request(group)
        except (KeyError, ValueError, TypeError) as exc:
            # The endpoint's own configuration cannot make this request: set aside, shown.
            reason = f"configuration: cannot build the request ({type(exc).__name__}: {exc})"
            return [self.set_aside(endpoint, row, reason) for row in group]
        try:
            answer = await outbound.send(
                self.client_for(endpoint.id),
                method,
                url,
                headers=headers,
                body=body,
                timeout=self.settings.webhook_timeout_seconds,
                allow_http=self.settings.outbound_allow_http,
                allow_private=self.settings.outbound_allow_private,
                address=address,
            )
        except outbound.Refused as exc:
            return [self.again(endpoint, row, reason=f"refused: {exc}") for row in group]
        except (TimeoutError, httpx.TimeoutException):
            return [self.again(endpoint, row, reason="timed out") for row in group]
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"[:200]
            return [self.again(endpoint, row, reason=reason) for row in group]
        self.metrics.webhook_seconds.labels(endpoint.id).observe(answer.latency_ms / 1000)
        seen: dict[str, Any] = {
            "status": answer.status,
            "latency": answer.latency_ms,
            "response": answer.excerpt,
        }
        # A delete of what the CRM does not hold (any more) has done its work.
        gone = answer.status == 404 and group[0]["kind"] == ERASURES.effect
        if 200 <= answer.status < 300 or gone:
            failures = endpoint.failed_items(group, answer) if not gone else {}
            return [
                self.again(endpoint, row, reason=failures[row["id"]], **seen)
                if row["id"] in failures
                else {"id": row["id"], "state": "delivered", "result": "delivered", **seen}
                for row in group
            ]
        if 300 <= answer.status < 400:
            where = answer.headers.get("location", "")[:200]
            reason = f"HTTP {answer.status}: redirect to {where!r} not followed"
        else:
            reason = f"HTTP {answer.status}"
        wait = None
        if answer.status in (429, 503):
            wait = deliveries.retry_after(answer.headers.get("retry-after"), datetime.now(UTC))
        return [self.again(endpoint, row, reason=reason, wait=wait, **seen) for row in group]

    def set_aside(self, endpoint: EndpointView, row: Row, reason: str) -> dict[str, Any]:
        log.error("webhook %s: delivery %s set aside: %s", endpoint.id, row["id"], reason)
        return {
            "id": row["id"],
            "state": "failed",
            "tried": 0,
            "reason": reason,
            "result": "failed",
        }

    def again(
        self,
        endpoint: EndpointView,
        row: Row,
        *,
        reason: str,
        wait: float | None = None,
        **seen: Any,
    ) -> dict[str, Any]:
        """The outcome of a failed attempt: due again after back-off (or the answer's
        Retry-After, within the cap), or set aside once that would pass the retry window."""
        settings = self.settings
        cap = settings.webhook_backoff_cap_seconds
        delay = deliveries.retry_delay(
            row["attempts"] + 1,
            base=settings.webhook_backoff_seconds,
            cap=cap,
            jitter=random.random(),
        )
        if wait is not None:
            delay = min(cap, max(wait, 0.0))
        window_ends = row["retry_from"].timestamp() + endpoint.retry_hours * 3600
        if time.time() + delay > window_ends:
            log.warning(
                "webhook %s: delivery %s set aside after %d attempts: %s",
                endpoint.id,
                row["id"],
                row["attempts"] + 1,
                reason,
            )
            return {
                "id": row["id"],
                "state": "failed",
                "reason": reason,
                "result": "failed",
                **seen,
            }
        return {
            "id": row["id"],
            "state": "pending",
            "due_in": delay,
            "reason": reason,
            "result": "retried",
            **seen,
        }

    async def housekeeping(self) -> None:
        """Backlog gauges every few seconds; done deliveries purged past retention."""
        now = time.monotonic()
        if now - self._gauges_at >= GAUGES_EVERY_SECONDS:
            self._gauges_at = now
            async with connection(self.db) as pg:
                rows = await webhook_store.backlog(pg)
            for row in rows:
                self.metrics.webhook_pending.labels(row["id"]).set(row["pending"])
                self.metrics.webhook_failed.labels(row["id"]).set(row["failed"])
                self.metrics.webhook_oldest.labels(row["id"]).set(row["oldest_seconds"])
        if now - self._purged_at >= PURGE_EVERY_SECONDS:
            self._purged_at = now
            async with transaction(self.db) as pg:
                await webhook_store.purge_done(
                    pg, self.settings.outbox_retention_hours, PURGE_CHUNK
                )


class EndpointBroken(Exception):
    """The endpoint's stored configuration cannot deliver anything (it fails the checks a
    create or a change passes today)."""


class EndpointView:
    """An endpoint as the dispatcher uses it: what to send, and how to read the answer."""

    def __init__(self, row: Row, vault: Vault) -> None:
        self.id: str = row["id"]
        self.kind: str = row["kind"]
        self.url: str = row["url"]
        self.rate: float = row["rate_per_second"]
        self.retry_hours: float = row["retry_hours"]
        mapping = orjson.loads(row["mapping"]) if row["mapping"] else None
        try:
            # The model every create and change passes: a writer whose stored mapping it
            # refuses would fail every round, so it is caught here, once, in words.
            checked = EndpointSettings.model_validate(
                {"name": row["name"], "url": row["url"], "kind": row["kind"], "mapping": mapping}
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise EndpointBroken(f"{where}: {first['msg']}" if where else first["msg"]) from None
        self.mapping: dict[str, Any] = checked.mapping.model_dump() if checked.mapping else {}
        self._secret = vault.open(row["secret"])

    def request(self, group: Sequence[Row]) -> tuple[str, str, dict[str, str], bytes]:
        """Method, URL, headers and body of the request that delivers `group`."""
        if self.kind == "webhook":
            [row] = group
            record = orjson.loads(row["payload"])
            body = orjson.dumps(deliveries.envelope(row["kind"], record, row["queued_at"]))
            headers = deliveries.signed_headers(
                self._secret, row["record_id"], int(time.time()), body
            )
            return "POST", self.url, headers, body
        mapping = self.mapping
        base = self.url.rstrip("/")
        if group[0]["kind"] == ERASURES.effect:
            [row] = group
            key = deliveries.identity(orjson.loads(row["payload"]), mapping["id_from"])
            assert key is not None  # crm_groups skipped the rest
            method, url, delete = deliveries.crm_delete(
                self.kind, base, key, sobject=mapping["object"], id_property=mapping["id_property"]
            )
            return method, url, self._crm_headers(json=delete is not None), delete or b""
        items = []
        for row in group:
            record = orjson.loads(row["payload"])
            key = deliveries.identity(record, mapping["id_from"])
            assert key is not None  # crm_groups skipped the rest
            items.append((key, deliveries.mapped_properties(record, mapping["properties"])))
        headers = self._crm_headers(json=True)
        if self.kind == "hubspot":
            body = orjson.dumps(deliveries.hubspot_batch(items, id_property=mapping["id_property"]))
            return "POST", f"{base}/crm/v3/objects/{mapping['object']}/batch/upsert", headers, body
        body = orjson.dumps(
            deliveries.salesforce_batch(
                items, sobject=mapping["object"], external_id=mapping["id_property"]
            )
        )
        path = (
            f"/services/data/{deliveries.SALESFORCE_API_VERSION}/composite/sobjects/"
            f"{mapping['object']}/{mapping['id_property']}"
        )
        return "PATCH", base + path, headers, body

    def _crm_headers(self, *, json: bool) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self._secret}"}
        if json:
            headers["content-type"] = "application/json"
        return headers

    def failed_items(self, group: Sequence[Row], answer: outbound.Answer) -> dict[int, str]:
        """Deliveries a 2xx answer still says failed: Salesforce answers per record
        (`success: false` with errors), in the request's order; HubSpot's 207 reports
        errors for the batch, which is sent again whole (upserts are idempotent)."""
        if self.kind == "salesforce":
            try:
                results = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                return {}
            if not isinstance(results, list):
                return {}
            failed: dict[int, str] = {}
            for row, result in zip(group, results, strict=False):
                if isinstance(result, dict) and result.get("success") is False:
                    errors = result.get("errors") or [{}]
                    first = errors[0] if isinstance(errors[0], dict) else {}
                    failed[row["id"]] = (
                        f"Salesforce: {first.get('statusCode', '')} {first.get('message', '')}"
                    )[:200]
            return failed
        if self.kind == "hubspot" and answer.status == 207:
            return {row["id"]: "HubSpot: 207, some inputs failed" for row in group}
        return {}
