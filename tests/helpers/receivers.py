"""Receivers on loopback for the outbound tests: a Standard Webhooks receiver that checks
every signature with the `standardwebhooks` library and answers by a plan (500, 429,
a timeout, a redirect, then 200), and stand-ins for HubSpot's batch upsert and GDPR delete
and Salesforce's sObject Collections upsert and delete by external id that check each
request against the vendors' documented shapes and limits (method, path, auth, content
type, batch size, field shapes)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Plan = Callable[[str, int], str]  # (webhook-id, attempt number) -> "ok" | "500" | ...


def always_ok(_: str, __: int) -> str:
    return "ok"


@dataclass
class Receiver:
    """What arrived: every attempt, the accepted messages in order, and any request that
    broke the contract (bad signature, wrong shape) as a complaint."""

    plan: Plan = always_ok
    secret: str | None = None
    token: str | None = None
    hang_seconds: float = 5.0
    # Each accepted message takes this long to answer (so a kill lands mid-delivery).
    answer_seconds: float = 0.0
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (id, answer)
    bodies: dict[str, set[bytes]] = field(default_factory=dict)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    complaints: list[str] = field(default_factory=list)
    crm_requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def tries(self, message_id: str) -> int:
        return sum(1 for seen, _ in self.attempts if seen == message_id)

    # -- the webhook receiver ---------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        message_id = headers.get("webhook-id", "")
        try:
            assert self.secret is not None
            Webhook(self.secret).verify(body, headers)
        except (WebhookVerificationError, AssertionError) as exc:
            self.complaints.append(f"{message_id}: signature: {exc}")
            return Response(status_code=401)
        self.bodies.setdefault(message_id, set()).add(body)
        answer = self.plan(message_id, self.tries(message_id) + 1)
        self.attempts.append((message_id, answer))
        if answer == "500":
            return Response("boom", status_code=500)
        if answer == "429":
            return Response(status_code=429, headers={"Retry-After": "0"})
        if answer == "timeout":
            await asyncio.sleep(self.hang_seconds)
            return Response(status_code=200)
        if answer == "redirect":
            return Response(status_code=302, headers={"Location": "http://169.254.169.254/"})
        if self.answer_seconds:
            await asyncio.sleep(self.answer_seconds)
        if message_id not in self.accepted_ids:
            self.accepted_ids.append(message_id)
            self.accepted.append(orjson.loads(body))
        return Response(status_code=204)

    # -- the CRM stand-ins --------------------------------------------------------------

    def _auth(self, request: Request) -> str | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return "authorization: not the bearer token"
        if not request.headers.get("content-type", "").startswith("application/json"):
            return "content-type: not application/json"
        return None

    async def hubspot(self, request: Request) -> Response:
        """POST /crm/v3/objects/{contacts|companies}/batch/upsert, as HubSpot documents it:
        {"inputs": [{"idProperty", "id", "properties": {name: string}}]}, at most 100."""
        problems = [p for p in [self._auth(request)] if p]
        body = orjson.loads(await request.body())
        if set(body) != {"inputs"} or not isinstance(body["inputs"], list):
            problems.append("body: only an inputs list")
        inputs = body.get("inputs") or []
        if not 1 <= len(inputs) <= 100:
            problems.append(f"inputs: {len(inputs)} (1 to 100)")
        ids = [i.get("id") for i in inputs]
        if len(set(ids)) != len(ids):
            problems.append("inputs: an id twice")
        for item in inputs:
            if set(item) != {"idProperty", "id", "properties"}:
                problems.append(f"input keys: {sorted(item)}")
            elif not all(isinstance(v, str) for v in item["properties"].values()):
                problems.append("properties: values must be strings")
        answer = self.plan(request.url.path, len(self.crm_requests) + 1)
        self.crm_requests.append({"vendor": "hubspot", "path": request.url.path, **body})
        if problems:
            self.complaints.extend(problems)
            return JSONResponse({"status": "error", "message": problems[0]}, status_code=400)
        if answer == "429":
            return Response(status_code=429, headers={"Retry-After": "0"})
        results = [{"id": str(n), "properties": i["properties"]} for n, i in enumerate(inputs)]
        return JSONResponse({"status": "COMPLETE", "results": results})

    async def salesforce(self, request: Request) -> Response:
        """PATCH /services/data/vXX.X/composite/sobjects/{SObject}/{ExternalIdField}:
        {"allOrNone": bool, "records": [{"attributes": {"type": SObject}, field: ...}]},
        at most 200, no record Id; answers one result per record, in order."""
        problems = [p for p in [self._auth(request)] if p]
        sobject, external_id = request.path_params["sobject"], request.path_params["field"]
        body = orjson.loads(await request.body())
        records = body.get("records") or []
        if not isinstance(body.get("allOrNone"), bool):
            problems.append("allOrNone: a boolean")
        if not 1 <= len(records) <= 200:
            problems.append(f"records: {len(records)} (1 to 200)")
        for record in records:
            if record.get("attributes") != {"type": sobject}:
                problems.append("attributes: the type of the URI's sObject")
            if not record.get(external_id):
                problems.append(f"{external_id}: missing")
            if "Id" in record or "id" in record:
                problems.append("a record Id: only external ids")
        self.crm_requests.append({"vendor": "salesforce", "path": request.url.path, **body})
        if problems:
            self.complaints.extend(problems)
            return JSONResponse([{"message": problems[0], "errorCode": "INVALID"}], 400)
        return JSONResponse(
            [
                {"id": f"00Q{n:012d}", "success": True, "errors": [], "created": True}
                for n, _ in enumerate(records)
            ]
        )

    async def hubspot_gdpr_delete(self, request: Request) -> Response:
        """POST /crm/v3/objects/contacts/gdpr-delete, as HubSpot documents it:
        {"objectId": the value, "idProperty": the unique property it is in}; 204."""
        problems = [p for p in [self._auth(request)] if p]
        body = orjson.loads(await request.body())
        if set(body) != {"objectId", "idProperty"} or not all(
            isinstance(v, str) and v for v in body.values()
        ):
            problems.append(f"gdpr-delete body: {sorted(body)}")
        if request.path_params["object"] != "contacts":
            problems.append("gdpr-delete: contacts only")
        self.crm_requests.append({"vendor": "hubspot", "path": request.url.path, **body})
        if problems:
            self.complaints.extend(problems)
            return JSONResponse({"status": "error", "message": problems[0]}, status_code=400)
        return Response(status_code=204)

    async def salesforce_delete(self, request: Request) -> Response:
        """DELETE /services/data/vXX.X/sobjects/{SObject}/{ExternalIdField}/{value}: no
        body; 204, or 404 when no record has that value."""
        problems = []
        if request.headers.get("authorization") != f"Bearer {self.token}":
            problems.append("authorization: not the bearer token")
        if await request.body():
            problems.append("delete: no body")
        params = request.path_params
        self.crm_requests.append(
            {"vendor": "salesforce", "method": "DELETE", "path": request.url.path, **params}
        )
        if problems:
            self.complaints.extend(problems)
            return JSONResponse([{"message": problems[0], "errorCode": "INVALID"}], 400)
        if self.plan(params["value"], 1) == "404":
            return JSONResponse([{"errorCode": "NOT_FOUND", "message": "not found"}], 404)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/hook", self.webhook, methods=["POST"]),
                Route("/crm/v3/objects/{object}/batch/upsert", self.hubspot, methods=["POST"]),
                Route(
                    "/crm/v3/objects/{object}/gdpr-delete",
                    self.hubspot_gdpr_delete,
                    methods=["POST"],
                ),
                Route(
                    "/services/data/{version}/sobjects/{sobject}/{field}/{value}",
                    self.salesforce_delete,
                    methods=["DELETE"],
                ),
                Route(
                    "/services/data/{version}/composite/sobjects/{sobject}/{field}",
                    self.salesforce,
                    methods=["PATCH"],
                ),
            ]
        )


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver):  # type: ignore[no-untyped-def]
    """Serve `receiver` on a free loopback port for the block; its base URL in .url."""
    config = uvicorn.Config(
        receiver.app(),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)


@dataclass
class Hung:
    """A receiver that reads each request and never answers: it notes when each request
    arrived (time.monotonic(), path) and how many connections are open at once. It runs on
    its own thread and event loop, so that holding hundreds of connections costs the
    service's loop (the test's) nothing but its own side of them."""

    starts: list[tuple[float, str]] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1")
                self.starts.append((time.monotonic(), path))
                await reader.read()  # until the caller gives up and closes
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def hanging(hung: Hung):  # type: ignore[no-untyped-def]
    """Serve `hung` on a free loopback port, on a thread of its own, for the block; its base
    URL in .url."""
    ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, int]] = (
        concurrent.futures.Future()
    )
    stopping = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(hung.handle, "127.0.0.1", 0, backlog=1024)
        ready.set_result((asyncio.get_running_loop(), server.sockets[0].getsockname()[1]))
        while not stopping.is_set():
            await asyncio.sleep(0.05)  # the thread's own loop: nothing to synchronise with
        server.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    _, port = await asyncio.wrap_future(ready)
    hung.url = f"http://127.0.0.1:{port}"
    try:
        yield hung
    finally:
        stopping.set()
        await asyncio.to_thread(thread.join, 10)
