"""Several scores in the running service: a lead ready for fleet but not warehouse becomes
MQL by fleet and goes to the fleet owners; later it qualifies for warehouse too (a second
notification, no second MQL); a crawler's page views are counted and score nothing; an
annual reset sets engagement to zero with the reason in the history."""

from __future__ import annotations

from tests.helpers.database import drained
from tests.helpers.factories import at, group, identify, page
from tests.helpers.kafka import produce, read_all, values
from tests.helpers.service import client_for
from tests.helpers.waiting import wait_for
from tests.unit.test_several_scores import CHROME, GOOGLEBOT, LINES, adds_up, document


async def test_two_product_lines_through_kafka_the_api_and_the_history(service, settings):
    async with client_for(service.container) as admin:
        published = await admin.post("/v1/rulesets", json=document())
        assert published.status_code == 201, published.text
        version = published.json()["version"]
        assert (await admin.post(f"/v1/rulesets/{version}/activate")).status_code == 200

        people = {"userAgent": CHROME}
        first = [
            identify({"title": "VP Logistics"}, user="u", when=at(0), context=people),
            page("/fleet/telematics", user="u", when=at(0, hours=1), context=people),
            page("/fleet/routes", user="u", when=at(0, hours=2), context=people),
            # A crawler following the same links: counted, not scored.
            *[
                page(
                    f"/warehouse/{n}",
                    user="u",
                    when=at(0, hours=3),
                    context={"userAgent": GOOGLEBOT},
                )
                for n in range(5)
            ],
        ]
        # Another lead, more of a warehouse reader.
        first += [
            page("/fleet/a", user="w", when=at(0, hours=1), context=people),
            page("/warehouse/b", user="w", when=at(0, hours=2), context=people),
        ]
        await produce(settings, first)
        await wait_for(lambda: drained(settings, len(first)), what="the first events")

        async def listed(**params: str) -> list[str]:
            answer = await admin.get("/v1/leads", params=params)
            assert answer.status_code == 200, answer.text
            return [item["lead_id"] for item in answer.json()["items"]]

        assert await listed(sort="-score:fleet") == ["u", "w"]
        assert await listed(sort="-score:warehouse") == ["w", "u"]
        assert await listed(sort="-score:warehouse", min_score="15") == ["w"]
        assert await listed(label="C3") == ["u"]  # the default score's: fit 10, engagement 0
        assert await listed(sort="-score", label="D3") == ["w"]
        assert await listed(sort="label") == ["u", "w"]  # C3 before D3
        second = (await admin.get("/v1/leads", params={"sort": "label", "limit": "1"})).json()
        assert second["items"][0]["lead_id"] == "u"
        assert await listed(sort="label", cursor=second["next_cursor"]) == ["w"]
        for bad in ({"sort": "-score:Fleet"}, {"sort": "score"}, {"label": "E1"}):
            assert (await admin.get("/v1/leads", params=bad)).status_code == 422
        page_of_u = (await admin.get("/v1/leads", params={"label": "C3"})).json()["items"][0]
        assert page_of_u["scores"] == {"default": 10.0, "fleet": 50.0, "warehouse": 10.0}
        lead = (await admin.get("/v1/leads/u")).json()
        assert lead["stage"] == "mql" and lead["ruleset_version"] == version
        assert lead["scores"]["fleet"]["total"] == 50 and lead["scores"]["warehouse"]["total"] == 10
        assert lead["qualified"] == {"fleet": "mql"}
        metrics = (await admin.get("/metrics")).text
        assert 'leadscore_events_consumed_total{result="bot"} 5.0' in metrics

        later = [
            page("/warehouse/racking", user="u", when=at(0, hours=4), context=people),
            page("/warehouse/wms", user="u", when=at(0, hours=5), context=people),
        ]
        await produce(settings, later)
        await wait_for(lambda: drained(settings, len(first) + len(later)), what="the rest")

        reset = await admin.post(
            "/v1/leads/u/adjustments",
            json={"operation": "set", "value": 0, "reason": "annual_reset"},
        )
        assert reset.status_code == 200, reset.text
        assert {name: s["engagement"] for name, s in reset.json()["scores"].items()} == {
            name: 0.0 for name in LINES
        }
        assert reset.json()["transition"] is None
        unknown = await admin.post(
            "/v1/leads/u/adjustments",
            json={"score": "boats", "operation": "add", "value": 5, "reason": "x"},
        )
        assert (unknown.status_code, unknown.json()["error"]) == (409, "unknown_score")
        for bad in (
            {"operation": "double", "value": 1, "reason": "x"},
            {"operation": "add", "value": 1e9, "reason": "x"},
            {"operation": "add", "value": 1},
        ):
            assert (await admin.post("/v1/leads/u/adjustments", json=bad)).status_code == 422
        missing = await admin.post(
            "/v1/leads/nobody/adjustments", json={"operation": "add", "value": 1, "reason": "x"}
        )
        assert missing.status_code == 404

        # The console: a bar and a row per score, the label, the score that qualified.
        page_html = (await admin.get("/console/leads/u")).text
        assert 'id="scores"' in page_html and 'id="label">C3<' in page_html
        assert "(qualified by fleet)" in page_html and "Why warehouse is" in page_html
        listing = (await admin.get("/console/leads", params={"sort": "-score:warehouse"})).text
        assert "highest warehouse score first" in listing
        assert listing.index(">w</a>") < listing.index(">u</a>")
        refused = await admin.get("/console/leads", params={"sort": "-score:<b>"})
        assert refused.status_code == 400 and "<b>" not in refused.text

        funnel = (await admin.get("/v1/funnel", params={"since": "2026-11-01T00:00:00Z"})).json()
        assert funnel["by_score"] == {"mql": {"fleet": 1}}
        assert funnel["by_label"] == {"mql": {"C3": 1}}

        history = (await admin.get("/v1/leads/u/history")).json()
        [entry] = history["adjustments"]
        assert (entry["reason"], entry["operation"], entry["scores"]) == (
            "annual_reset",
            "set",
            LINES,
        )
        # The events' shares, the adjustment's and the fit still add up to the default score.
        events = sum(round(e["contribution"] * 100) for e in history["events"])
        fit = sum(
            round(s["contribution"] * 100) for s in history["signals"] if s["category"] == "fit"
        )
        adjusted = round(history["adjusted_contribution"] * 100)
        assert events + fit + adjusted == round(history["score"]["total"] * 100)
        assert history["score"]["engagement"] == 0
        # Each named score's history adds up to it the same way: events, the adjustment.
        for name in ("fleet", "warehouse"):
            part = history["by_score"][name]
            assert len(part["contributions"]) == len(history["events"])
            cents = sum(round(c * 100) for c in part["contributions"])
            cents += round(part["unlisted_contribution"] * 100)
            cents += round(part["adjusted_contribution"] * 100)
            assert cents == round(part["engagement"] * 100) == 0, name
            assert sum(part["contributions"]) > 0  # the pages' shares, which the reset offsets
        lead = (await admin.get("/v1/leads/u")).json()
        adjusting = {s["rule_id"] for s in lead["signals_by_score"]["fleet"]}
        assert "adjust:fleet" in adjusting
        assert all(s["engagement"] == 0 for s in lead["scores"].values())
        timeline = (await admin.get("/console/leads/u")).text
        assert "engagement set 0" in timeline and "annual_reset" in timeline

    await wait_for(lambda: drained(settings, len(first) + len(later)), what="the outbox")
    [transition] = values(await read_all(settings, settings.topic_transitions, expect=1))
    assert (transition["to_stage"], transition["qualified_by"]) == ("mql", ["fleet"])
    notifications = values(await read_all(settings, settings.topic_notifications, expect=2))
    # Each to its score's team (the queue's owner in turn).
    assert [(n["type"], n["owner"], n["qualified_by"]) for n in notifications] == [
        ("promotion", "f1", ["fleet"]),
        ("qualified", "w1", ["warehouse"]),
    ]
    for notification in notifications:
        adds_up(notification)


async def test_an_accounts_engagement_is_adjusted_with_a_reason(service, settings):
    company = {"name": "ShelfCo", "industry": "Wholesale", "employees": 120, "country": "CA"}
    docs = [
        identify({"title": "Owner", "email": "o@shelfco.example"}, user="m", when=at(0)),
        group("acct-1", company, user="m", when=at(0, hours=1)),
        page("/warehouse/a", user="m", when=at(0, hours=2)),
    ]
    await produce(settings, docs)
    await wait_for(lambda: drained(settings, len(docs)), what="the member's events")
    async with client_for(service.container) as admin:
        adjusted = await admin.post(
            "/v1/accounts/acct-1/adjustments",
            json={"score": "warehouse", "operation": "add", "value": 25, "reason": "trade fair"},
        )
        assert adjusted.status_code == 200, adjusted.text
        scores = adjusted.json()["scores"]
        # The member's page, decayed to now (the adjustment moves the account's clock to
        # it), and the 25 added.
        member = (await admin.get("/v1/leads/m")).json()["scores"]["warehouse"]["engagement"]
        assert 0 < member < 10 and scores["default"]["engagement"] == 0
        assert abs(scores["warehouse"]["engagement"] - (member + 25)) <= 0.011
        account = (await admin.get("/v1/accounts/acct-1")).json()
        assert account["scores"]["warehouse"] == scores["warehouse"]
        listed = (await admin.get("/v1/accounts", params={"sort": "-score:warehouse"})).json()
        [item] = listed["items"]
        assert item["scores"]["warehouse"] == scores["warehouse"]["total"]
        refused = await admin.get("/v1/accounts", params={"sort": "-score:Bad"})
        assert refused.status_code == 422
        missing = await admin.post(
            "/v1/accounts/nobody/adjustments", json={"operation": "add", "value": 1, "reason": "x"}
        )
        assert missing.status_code == 404
        audit = (await admin.get("/v1/audit")).json()["items"]
        [entry] = [a for a in audit if a["action"] == "account.adjust"]
        assert entry["target"] == "acct-1" and entry["detail"]["reason"] == "trade fair"
