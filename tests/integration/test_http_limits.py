"""HTTP requests that used to stop scoring or answer 500: each now gets a clear 4xx."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import orjson
import pytest

from services.runtime.bootstrap import bootstrap
from tests.helpers.service import client_for


async def test_ingest_refuses_the_events_that_used_to_stop_the_consumer(admin_container):
    async with client_for(admin_container, "ingest") as client:
        year_one = await client.post(
            "/v1/page",
            json={"messageId": "h2", "userId": "u", "timestamp": "0001-01-01T00:00:00+14:00"},
        )
        nul = await client.post(
            "/v1/track", json={"messageId": "h3", "userId": "u\x00", "event": "x"}
        )
        surrogate = await client.post(
            "/v1/track",
            content=b'{"messageId": "h4", "userId": "\\ud800", "event": "x"}',
            headers={"content-type": "application/json"},
        )
    assert year_one.status_code == 422
    assert year_one.json()["detail"][0]["error"] == "invalid_timestamp"
    assert nul.status_code == 422 and nul.json()["detail"][0]["error"] == "invalid_text"
    assert surrogate.status_code == 422
    assert surrogate.json()["detail"][0]["error"] == "invalid_text"


async def test_bodies_over_the_limit_get_413_on_every_endpoint(admin_container):
    body = b'{"events": [' + b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}]}'
    async with client_for(admin_container, "admin") as client:
        for path in ("/v1/rulesets/1/simulate", "/v1/batch", "/v1/leads/u/feedback"):
            response = await client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 413, path
            assert response.json()["error"] == "too_large"


async def test_a_streamed_body_without_length_is_cut_off_at_the_limit(admin_container):
    async def chunks():
        yield b'{"events": [{"a": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    async with client_for(admin_container, "admin") as client:
        response = await client.post(
            "/v1/rulesets/1/simulate",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413 and response.json()["error"] == "too_large"


async def test_405_names_every_method_of_the_path(admin_container):
    async with client_for(admin_container, "admin") as client:
        response = await client.request("DELETE", "/v1/rulesets")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    "path",
    ["/v1/rulesets/99999999999", "/v1/rulesets/1/diff/4294967296", "/v1/audit?cursor=%00"],
)
async def test_out_of_range_numbers_and_nul_are_4xx_not_500(admin_container, path):
    async with client_for(admin_container, "admin") as client:
        response = await client.get(path)
    assert 400 <= response.status_code < 500, response.text


async def test_a_simulation_over_its_time_budget_stops_with_422(admin_container):
    settings = admin_container.settings.model_copy(update={"request_cpu_seconds": 0.001})
    container = bootstrap(settings)
    events = [
        {
            "type": "page",
            "messageId": f"m{i}",
            "userId": f"u{i % 50}",
            "timestamp": "2026-11-01T00:00:00Z",
            "properties": {"path": "/pricing"},
        }
        for i in range(2_000)
    ]
    try:
        async with client_for(container, "viewer") as client:
            response = await client.post("/v1/rulesets/1/simulate", json={"events": events})
    finally:
        await container.close()
    assert response.status_code == 422 and response.json()["error"] == "too_expensive"


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


async def test_a_gzip_body_is_inflated_and_checked_like_a_plain_one(admin_container):
    # Only bad events: the 422 names each, so the body was read inflated.
    events = [{"type": "track", "messageId": f"g{i}", "event": "x"} for i in range(3)]
    events[1].update(userId="u", timestamp="not a time")
    body = gzipped(orjson.dumps({"batch": events, "sentAt": "2026-12-01T00:00:00Z"}))
    async with client_for(admin_container, "ingest") as client:
        answer = await client.post(
            "/v1/batch",
            content=body,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert [p["index"] for p in error["detail"]] == [0, 1, 2]
    # What Segment's and RudderStack's SDKs read from an error: a sentence, not JSON.
    assert error["code"] == "invalid_events"
    assert error["message"].startswith("event 0: missing_identity: neither userId")
    assert "event 1: invalid_timestamp: timestamp 'not a time' is not ISO-8601" in error["message"]


async def test_a_gzip_bomb_gets_413_without_being_inflated_in_memory(admin_container):
    # 64 MiB of zeros in about 64 KiB: compressed chunk by chunk, never held whole here.
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    zero = bytes(1024 * 1024)
    bomb = b"".join(deflate.compress(zero) for _ in range(64)) + deflate.flush()
    assert len(bomb) < admin_container.settings.max_body_bytes
    async with client_for(admin_container, "ingest") as client:
        tracemalloc.start()
        try:
            answer = await client.post(
                "/v1/batch",
                content=bomb,
                headers={"content-type": "application/json", "content-encoding": "gzip"},
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert answer.status_code == 413 and answer.json()["code"] == "too_large"
    # The limit is 1 MiB: what was inflated stayed within a few times that, not 64 MiB.
    assert peak < 8 * 1024 * 1024, peak


async def test_corrupt_or_unknown_encodings_are_refused_in_words(admin_container):
    good = gzipped(b'{"batch": []}')
    cases = [
        ("gzip", b"this is not gzip", 400, "corrupt"),
        ("gzip", good[:-6], 400, "truncated"),
        ("gzip", good + b"trailing", 400, "after its end"),
        ("br", b"\x00\x01", 415, "gzip"),
    ]
    async with client_for(admin_container, "ingest") as client:
        for encoding, body, status, words in cases:
            answer = await client.post(
                "/v1/batch",
                content=body,
                headers={"content-type": "application/json", "content-encoding": encoding},
            )
            assert answer.status_code == status, (encoding, answer.text)
            assert words in answer.json()["detail"], answer.text
