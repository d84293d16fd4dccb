"""Explanations add up in the running service: after 60 days of a generated workload, with
some leads recycled by sales on the way, every lead's signals sum to the total on its
endpoint, its history's events sum to it, and so do the signals of every notification."""

from __future__ import annotations

from bench.workload import generate
from tests.helpers.database import db_fetch, drained
from tests.helpers.kafka import produce, read_all, values
from tests.helpers.service import client_for
from tests.helpers.waiting import wait_for


def cents(value: float) -> int:
    return round(value * 100)


def signal_cents(signals: list[dict], category: str) -> int:
    return sum(cents(s["contribution"]) for s in signals if s["category"] == category)


async def test_every_lead_is_explained_to_the_cent_on_the_endpoint_history_and_notifications(
    service, settings
):
    first = list(generate(events=3000, leads=150, seed=21, days=60))
    await produce(settings, first)
    await wait_for(lambda: drained(settings, len(first)), timeout=90, what="the first wave")
    handed_over = await db_fetch(
        settings, "SELECT lead_id FROM leads WHERE stage IN ('mql', 'sal') ORDER BY lead_id"
    )
    rejected = [r["lead_id"] for r in handed_over[::3]]
    assert rejected
    async with client_for(service.container) as api:
        for n, lead_id in enumerate(rejected):
            response = await api.post(
                f"/v1/leads/{lead_id}/feedback",
                json={"feedback_id": f"f-{n}", "outcome": "rejected", "reason": "no budget"},
            )
            assert response.status_code == 200, response.text
        # More activity after the recycling: it counts again, from zero.
        second = list(generate(events=1500, leads=150, seed=22, days=60))
        await produce(settings, second)
        await wait_for(
            lambda: drained(settings, len(first) + len(second)), timeout=90, what="the rest"
        )

        leads = [r["lead_id"] for r in await db_fetch(settings, "SELECT lead_id FROM leads")]
        superseded_seen = 0
        for lead_id in leads:
            lead = (await api.get(f"/v1/leads/{lead_id}")).json()
            score = lead["score"]
            assert signal_cents(lead["signals"], "fit") == cents(score["fit"]), lead_id
            assert signal_cents(lead["signals"], "engagement") == cents(score["engagement"])

            history = (await api.get(f"/v1/leads/{lead_id}/history?limit=10000")).json()
            assert history["unlisted_contribution"] == 0, lead_id  # every event is listed
            events = sum(cents(e["contribution"]) for e in history["events"])
            assert signal_cents(history["signals"], "fit") + events == cents(
                history["score"]["total"]
            ), lead_id
            # As of the reading too: what each event adds now sums to the score now, and
            # that is the score the lead's own endpoint gives (the lead page's "now").
            now = sum(cents(e["contribution_now"]) for e in history["events"])
            assert signal_cents(history["signals"], "fit") + now == cents(
                history["score_now"]["total"]
            ), lead_id
            assert abs(history["score_now"]["total"] - score["total"]) <= 0.02, lead_id
            for event in history["events"]:
                if event["superseded"]:
                    superseded_seen += 1
                    assert event["contribution"] == 0
        assert superseded_seen > 0  # the recycled leads' earlier events

    notifications = values(await read_all(settings, settings.topic_notifications, expect=1))
    assert len(notifications) > 20
    for notification in notifications:
        score = notification["score"]
        if notification["type"] == "account_qualified":
            # An account's counted members add up to its engagement, its parts to its total.
            members = sum(cents(m["contribution"]) for m in notification["top_members"])
            assert members == cents(score["engagement"]), notification["notification_id"]
            parts = cents(score["fit"]) + cents(score["engagement"]) + cents(score["coverage"])
            assert parts == cents(score["total"]), notification["notification_id"]
            continue
        signals = notification["signals"]
        assert signal_cents(signals, "fit") + signal_cents(signals, "engagement") == cents(
            score["total"]
        ), notification["notification_id"]
