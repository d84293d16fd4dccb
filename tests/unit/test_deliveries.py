"""What a delivery says and when it goes again (pure), and the outbound guard's address
checks, DNS answers included (the resolver stubbed: no network in unit tests)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from schemas.webhooks import EndpointCreate
from services.adapters import outbound
from services.adapters.secrets import new_signing_secret
from stage_router import deliveries


def test_a_signature_verifies_with_the_standard_webhooks_library():
    secret = new_signing_secret()
    body = orjson.dumps(
        deliveries.envelope("transitions", {"lead_id": "u", "é": "ü"}, datetime.now(UTC))
    )
    now = int(datetime.now(UTC).timestamp())
    headers = deliveries.signed_headers(secret, "u:3", now, body)
    assert Webhook(secret).verify(body, headers)["data"]["lead_id"] == "u"
    tampered = body.replace(b'"u"', b'"v"')
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(tampered, headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(new_signing_secret()).verify(body, headers)


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=0.999))
def test_back_off_doubles_within_the_cap_and_jitter_keeps_half_at_least(attempt, jitter):
    delay = deliveries.retry_delay(attempt, base=5, cap=3600, jitter=jitter)
    full = min(3600.0, 5 * 2.0 ** (attempt - 1))
    assert full / 2 <= delay <= full


def test_retry_after_reads_seconds_and_dates():
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert deliveries.retry_after("30", now) == 30
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert deliveries.retry_after(later, now) == 90
    assert deliveries.retry_after("soon", now) is None
    assert deliveries.retry_after(None, now) is None


def test_a_records_move_number_comes_from_its_id():
    assert deliveries.record_seq("u", "u:7") == 7
    assert deliveries.record_seq("a:b", "a:b:12:promotion") == 12
    assert deliveries.record_seq("u", "other:3") == 0


def test_crm_batches_have_the_vendors_shapes():
    record = {
        "lead_id": "u",
        "to_stage": "mql",
        "reason": "threshold",
        "score": {"total": 61.234, "fit": 40, "engagement": 21.234},
        "qualified_by": ["fleet", "warehouse"],
    }
    props = deliveries.mapped_properties(
        record, {"ls_score": "score", "ls_stage": "stage", "ls_by": "qualified_by", "x": "label"}
    )
    assert props == {"ls_score": 61.23, "ls_stage": "mql", "ls_by": "fleet;warehouse"}
    hub = deliveries.hubspot_batch([("u", props)], id_property="leadscore_id")
    assert hub == {
        "inputs": [
            {
                "idProperty": "leadscore_id",
                "id": "u",
                "properties": {"ls_score": "61.23", "ls_stage": "mql", "ls_by": "fleet;warehouse"},
            }
        ]
    }
    sf = deliveries.salesforce_batch([("u", props)], sobject="Lead", external_id="Ext__c")
    assert sf["allOrNone"] is False
    assert sf["records"] == [{"attributes": {"type": "Lead"}, "Ext__c": "u", **props}]


def test_mappings_are_validated():
    base = {"name": "h", "url": "https://api.hubapi.com", "kind": "hubspot", "token": "t" * 10}
    good = {"object": "contacts", "id_property": "email", "properties": {"ls": "score"}}
    assert EndpointCreate.model_validate({**base, "mapping": good, "records": ["transitions"]})
    for bad in (
        {**good, "object": "Lead"},
        {**good, "properties": {"ls": "password"}},
        {**good, "properties": {"bad name": "score"}},
        {**good, "properties": {}},
        {**good, "properties": {"email": "score"}},
    ):
        with pytest.raises(ValueError):
            EndpointCreate.model_validate({**base, "mapping": bad})
    with pytest.raises(ValueError):
        EndpointCreate.model_validate({**base, "mapping": None})
    with pytest.raises(ValueError):
        EndpointCreate.model_validate({"name": "w", "url": "https://x.example", "token": "t" * 9})


@pytest.mark.parametrize(
    "address, refused",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "reserved or shared"),
        ("0.0.0.0", "loopback"),
        ("224.0.0.1", "reserved or shared"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_classes(address, refused):
    why = outbound.address_refusal(address)
    assert (why if why is None else why.split(" (")[0]) == refused


@pytest.mark.parametrize(
    "url, says",
    [
        ("https://%31%32%37.0.0.1/h", "127.0.0.1, a loopback"),
        ("https://ex%61mple.com/h", "percent-encoded"),
        ("https://0x7f000001/h", "loopback"),
        ("https://2130706433/h", "loopback"),
        ("https://127.1/h", "loopback"),
        ("https://0/h", "loopback"),
        ("https://127.0.0.1./h", "loopback"),
        ("https://[::ffff:127.0.0.1]/h", "loopback"),
        ("https://[::ffff:a00:1]/h", "private"),
        ("https://[2002:7f00:1::]/h", "loopback"),  # 6to4 carrying 127.0.0.1
        ("https://[2002:a9fe:a9fe::]/h", "link-local"),  # 6to4 carrying 169.254.169.254
        ("https://[64:ff9b::a9fe:a9fe]/h", "link-local"),  # NAT64
        ("https://[::127.0.0.1]/h", "loopback"),  # IPv4-compatible
        ("https://192.0.0.8/h", "reserved"),
        ("https://192.0.0.170/h", "private"),
        ("https://localhost./h", "loopback name"),
        ("https://example.com:65536/h", "1 to 65535"),
        ("https://example.com:0/h", "1 to 65535"),
        ("https://example.com:-1/h", "1 to 65535"),
        ("https://" + "a" * 64 + ".example.com/h", "63 per label"),
        ("https://" + "a." * 127 + "com/h", "at most 253"),
    ],
)
def test_every_spelling_of_an_inside_address_is_refused_when_set(url, says):
    with pytest.raises(outbound.Refused, match=says.replace(".", r"\.")):
        outbound.target(url, allow_http=False, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/h",
        "https://hooks.example.com:8443/h?x=1",
        "https://93.184.215.14/h",
        "https://[2606:4700::1111]/h",
        "https://[2002:5db8:d70e::]/h",  # 6to4 carrying a public address
        "https://b\u00fccher.example/h",
        "https://cafe.be/h",
    ],
)
def test_public_endpoints_are_taken(url):
    assert outbound.target(url, allow_http=False, allow_private=False).port in (443, 8443)


def stub_dns(monkeypatch, answers: list[str]) -> None:
    async def getaddrinfo(host, port, **_):  # type: ignore[no-untyped-def]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    "answers, refused",
    [
        (["10.0.0.7"], True),
        (["93.184.215.14", "169.254.169.254"], True),  # one inside answer is enough
        (["93.184.215.14"], False),
    ],
)
def test_dns_answers_pointing_inside_are_refused(monkeypatch, answers, refused):
    spot = outbound.target("https://hooks.example.com/x", allow_http=False, allow_private=False)

    async def resolve() -> str:
        stub_dns(monkeypatch, answers)
        return await outbound.resolve(spot, allow_private=False)

    if refused:
        with pytest.raises(outbound.Refused, match="resolves to"):
            asyncio.run(resolve())
    else:
        assert asyncio.run(resolve()) == answers[0]
