"""What an admin sends is taken as typed, and every lead and account is reachable: JSON's
types are not coerced ("10" is no number, true is no 1), and ids with `/`, `%`, `?`, `#` or
spaces are one percent-encoded path segment on every API route and console page."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.helpers.database import drained
from tests.helpers.factories import group, identify, page
from tests.helpers.kafka import produce
from tests.helpers.service import client_for
from tests.helpers.waiting import wait_for

ODD_LEAD = "acme/eu 50%?#1"
ODD_ACCOUNT = "grp/1%2F"


def segment(value: str) -> str:
    return quote(value, safe="")


async def test_ids_with_reserved_characters_are_reachable_on_every_route(service, settings):
    docs = [
        identify({"email": "ops@acme.example", "title": "VP Operations"}, user=ODD_LEAD),
        group(ODD_ACCOUNT, {"name": "Acme EU", "industry": "Software"}, user=ODD_LEAD),
        page("/pricing", user=ODD_LEAD),
        # A lead whose id is the odd one's prefix: a request must never reach it instead.
        identify({"email": "other@acme.example"}, user="acme"),
    ]
    await produce(settings, docs)
    await wait_for(lambda: drained(settings, len(docs)), what="the events scored")
    lead, account = segment(ODD_LEAD), segment(ODD_ACCOUNT)
    async with client_for(service.container) as admin:
        detail = await admin.get(f"/v1/leads/{lead}")
        assert detail.status_code == 200, detail.text
        assert detail.json()["lead_id"] == ODD_LEAD
        history = await admin.get(f"/v1/leads/{lead}/history")
        assert history.status_code == 200, history.text
        assert history.json()["lead_id"] == ODD_LEAD
        adjusted = await admin.post(
            f"/v1/leads/{lead}/adjustments",
            json={"operation": "add", "value": 7, "reason": "met at the fair"},
        )
        assert adjusted.status_code == 200, adjusted.text
        assert adjusted.json()["lead_id"] == ODD_LEAD
        moved = await admin.post(
            f"/v1/leads/{lead}/stage", json={"stage": "sal", "reason": "asked for a call"}
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["transition"]["lead_id"] == ODD_LEAD
        feedback = await admin.post(
            f"/v1/leads/{lead}/feedback", json={"feedback_id": "f-odd", "outcome": "qualified"}
        )
        assert feedback.status_code == 200, feedback.text
        other = (await admin.get("/v1/leads/acme")).json()
        assert other["stage"] == "lead", "the prefix's lead is untouched"

        found = await admin.get(f"/v1/accounts/{account}")
        assert found.status_code == 200, found.text
        assert found.json()["account_id"] == ODD_ACCOUNT
        assert (await admin.get(f"/v1/accounts/{account}/history")).status_code == 200
        account_adjusted = await admin.post(
            f"/v1/accounts/{account}/adjustments",
            json={"operation": "add", "value": 3, "reason": "trade fair"},
        )
        assert account_adjusted.status_code == 200, account_adjusted.text

        # Unencoded, the slash is a path separator: no such route, plainly said.
        assert (await admin.get("/v1/leads/acme/eu")).status_code == 404
        console = await admin.get(f"/console/leads/{lead}")
        assert console.status_code == 200, console.text
        assert "acme/eu 50%?#1" in console.text
        assert (await admin.get(f"/console/accounts/{account}")).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/leads/u/adjustments", {"operation": "add", "value": "10", "reason": "x"}, "value"),
        ("/v1/leads/u/adjustments", {"operation": "add", "value": True, "reason": "x"}, "value"),
        ("/v1/accounts/g/adjustments", {"operation": "set", "value": "0", "reason": "x"}, "value"),
        ("/v1/webhooks", {"name": "n", "url": "https://example.com/h", "paused": "true"}, "paused"),
        ("/v1/webhooks", {"name": "n", "url": "https://example.com/h", "rate_per_second": "5"}, ""),
        ("/v1/webhooks", {"name": "n", "url": "https://example.com/h", "retry_hours": True}, ""),
        ("/v1/rulesets/1/propose", {"seed": "3"}, "seed"),
        ("/v1/rulesets/1/impact", {"days": "30"}, "days"),
        ("/v1/webhooks/ep_0/redeliver", {"delivery_id": "1"}, "delivery_id"),
    ],
)
async def test_admin_bodies_take_json_types_as_they_are(admin_container, path, body, where):
    async with client_for(admin_container, "admin") as admin:
        answer = await admin.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert any(where in problem["loc"] for problem in answer.json()["detail"])


async def test_a_browser_guard_sees_an_encoded_id_as_one_segment(admin_container):
    """A tokenless write in a content type the route does not document is refused on a path
    with an encoded slash as on any other (the guard matches the route it will reach)."""
    async with client_for(admin_container) as browser:
        answer = await browser.post(
            f"/v1/leads/{segment(ODD_LEAD)}/stage",
            content=b'{"stage": "sal", "reason": "x"}',
            headers={"content-type": "text/plain"},
        )
    assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "raw",
    ["%00", "a%00b", "%FF", "%C3%28", "%2F", "%2F%2F", "%25", "%252F", "%", "%zz", "x" * 600],
)
async def test_hostile_ids_in_paths_get_a_plain_answer(admin_container, raw):
    """Whatever an id in a path holds (NUL, bytes that are not UTF-8, only slashes, stray
    percent signs, too long), every lead and account route answers 4xx, never 500."""
    async with client_for(admin_container, "admin") as admin:
        for method, path, body in (
            ("GET", f"/v1/leads/{raw}", None),
            ("GET", f"/v1/leads/{raw}/history", None),
            ("POST", f"/v1/leads/{raw}/stage", {"stage": "sal", "reason": "x"}),
            (
                "POST",
                f"/v1/leads/{raw}/adjustments",
                {"operation": "add", "value": 1, "reason": "x"},
            ),
            ("GET", f"/v1/accounts/{raw}", None),
        ):
            answer = await admin.request(method, path, json=body)
            assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text)
        # The console (a bearer token is no console session: it sends people to sign in).
        page = await admin.get(f"/console/leads/{raw}")
        assert page.status_code < 500, (raw, page.status_code, page.text)
