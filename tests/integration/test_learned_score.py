"""A learned score trained, challenged, activated and rolled back through the API, and
retrained on its schedule, on a real broker and database: generated traffic scored by the
starter rules, outcomes planted through the feedback topic as a CRM would send them
(webinars and replies win, the careers page loses), then `POST /v1/rulesets/1/train`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bench.review_demo import plant_outcomes, wait_feedback
from bench.workload import generate, lead_key
from services.adapters.postgres import lead_store, rule_set_store
from services.adapters.postgres.db import connection
from services.app.learned_scores import SCHEDULE, SCHEDULED, retrain_now
from services.runtime.bootstrap import bootstrap
from services.settings import Settings
from tests.helpers.database import drained
from tests.helpers.factories import page
from tests.helpers.kafka import produce
from tests.helpers.service import RunningService, client_for, token_settings
from tests.helpers.waiting import wait_for
from tests.integration.test_admin_api import wait_job
from tests.integration.test_console import console_client, csrf_of, sign_in


async def test_a_learned_score_is_trained_activated_and_rolled_back(settings: Settings) -> None:
    service = await RunningService(bootstrap(token_settings(settings))).start()
    try:
        docs: list[Any] = [
            d
            for d in generate(events=20_000, leads=2_000, seed=8, recent=True, days=30)
            if not isinstance(d, bytes)
        ]
        await produce(settings, docs, key=lead_key)
        await wait_for(lambda: drained(settings, len(docs)), timeout=120, what="the traffic")
        planted = await plant_outcomes(settings)
        await wait_feedback(settings, planted)
        async with client_for(service.container, "admin") as admin:
            trained = await admin.post("/v1/rulesets/1/train", json={"target": "won"})
            assert trained.status_code == 201, trained.text
            body = trained.json()
            report = body["report"]
            assert (body["version"], body["source_version"], body["score"]) == (2, 1, "likelihood")
            assert report["positives"] >= 40 and report["samples"] - report["positives"] >= 40
            assert report["auc"] > 0.5 and report["auc_rules"] is not None
            assert sum(b["leads"] for b in report["bands"].values()) == report["held_out"]
            version = (await admin.get("/v1/rulesets/2")).json()
            model = version["document"]["scores"]["likelihood"]["model"]
            assert model["training"]["samples"] == report["samples"]
            names = {f["name"] for f in model["features"]}
            assert {n.split(":")[0] for n in names} <= {
                "rule",
                "fit",
                "journey",
                "first_touch",
                "last_touch",
                "tenure_days",
                "account",
            }
            # Each lead was replayed with its account's members: the account's score and
            # coverage at the handoff are features, as live.
            assert {"account:score", "account:coverage"} <= names
            assert (await admin.get("/v1/rulesets/active")).json()["version"] == 1

            # The schedule: one instance claims a period, then trains the active version
            # and starts the result as the challenger, never activating it.
            async with connection(service.container.db) as pg:
                claimed = await rule_set_store.claim_scheduled(
                    pg, action=SCHEDULED, every_seconds=86400, actor=SCHEDULE
                )
                again = await rule_set_store.claim_scheduled(
                    pg, action=SCHEDULED, every_seconds=86400, actor=SCHEDULE
                )
            assert claimed is None and again is not None and again > datetime.now(UTC)
            scheduled = await retrain_now(service.container)
            assert scheduled is not None and scheduled.version == 3
            status = (await admin.get("/v1/challenger")).json()
            assert (status["version"], status["started_by"]) == (3, SCHEDULE)
            assert (await admin.get("/v1/rulesets/active")).json()["version"] == 1
            runs = service.container.metrics.registry.get_sample_value(
                "leadscore_scheduled_trainings_total", {"result": "challenging"}
            )
            assert runs == 1

            # A person's challenger instead: the schedule's is stopped, version 2 warmed as
            # the challenger over the API, then activated: promoted at once.
            stopped = await admin.delete("/v1/rulesets/3/challenge")
            assert stopped.status_code == 200, stopped.text
            started = await admin.post("/v1/rulesets/2/challenge")
            assert started.status_code == 201, started.text
            job = await wait_job(admin, started.json()["warm_up_job"])
            assert job["status"] == "succeeded", job
            # While a person's challenger runs, the schedule only publishes.
            published = await retrain_now(service.container)
            assert published is not None and published.version == 4
            assert (await admin.get("/v1/challenger")).json()["version"] == 2

            # Live: activated, the next event of a lead gives it the learned score.
            activated = await admin.post("/v1/rulesets/2/activate")
            assert activated.status_code == 200, activated.text
            assert activated.json()["challenger"]["leads"] > 0
            # A member of an account: its account page lists the learned score too.
            lead_id = next(d["userId"] for d in docs if d.get("type") == "group")
            visit = page("/pricing", user=lead_id, message_id="after-training")
            await produce(settings, [visit])
            await wait_for(lambda: drained(settings, len(docs) + 1), what="the next visit")
            lead = (await admin.get(f"/v1/leads/{lead_id}")).json()
            learned = lead["scores"]["likelihood"]
            assert 0 <= learned["total"] <= 100 and learned["label"] in ("A", "B", "C", "D")
            reasons = lead["signals_by_score"]["likelihood"]
            assert reasons[0]["rule_id"] == "model:base"
            assert abs(sum(r["contribution"] for r in reasons) - learned["total"]) < 0.011
            # Its account lists each member's learned score.
            account_id = lead["account_id"]
            account = (await admin.get(f"/v1/accounts/{account_id}")).json()
            member = next(m for m in account["members"] if m["lead_id"] == lead_id)
            async with connection(service.container.db) as pg:
                kept = (await lead_store.load_leads(pg, [lead_id]))[lead_id].totals
            # As of the member's latest event, as lists show it (the lead's page: as of now).
            assert kept is not None
            assert member["learned"] == {"likelihood": round(kept["likelihood"], 2)}

            # The console: the model's card on its version, the score and its reasons on
            # the lead's page.
            async with console_client(service.container) as console:
                await sign_in(console, "viewer")
                card = await console.get("/console/rules/2")
                assert card.status_code == 200
                assert "Learned score: likelihood" in card.text
                assert f"<td>{report['auc']}</td>" in card.text
                assert 'id="calibration-likelihood-t"' in card.text
                assert 'id="features-likelihood-t"' in card.text
                page_of_lead = await console.get(f"/console/leads/{lead_id}")
                assert "Why likelihood is" in page_of_lead.text
                page_of_account = await console.get(f"/console/accounts/{account_id}")
                assert "likelihood (learned)" in page_of_account.text
                assert "Likeliest to convert by the learned score" in page_of_account.text
            async with console_client(service.container) as console:
                await sign_in(console, "admin")
                csrf = csrf_of((await console.get("/console/rules/1")).text)
                posted = await console.post(
                    "/console/rules/1/train", data={"csrf": csrf, "days": "365", "target": "won"}
                )
                assert posted.status_code == 303 and posted.headers["location"].startswith(
                    "/console/rules/"
                )
                assert "Trained the learned score" in posted.headers["location"].replace("+", " ")

            # Rolled back: the rules alone again.
            back = await admin.post("/v1/rulesets/1/activate")
            assert back.status_code == 200, back.text
            lead = (await admin.get(f"/v1/leads/{lead_id}")).json()
            assert "likelihood" not in lead["scores"]

            # A window without outcomes is refused in words.
            empty = await admin.post(
                "/v1/rulesets/1/train",
                json={"since": "2020-01-01T00:00:00Z", "until": "2020-02-01T00:00:00Z"},
            )
            assert (empty.status_code, empty.json()["error"]) == (422, "too_few_outcomes")
            taken = await admin.post("/v1/rulesets/1/train", json={"score": "warehouse"})
            assert (taken.status_code, taken.json()["error"]) == (422, "score_taken")
        async with client_for(service.container, "viewer") as viewer:
            refused = await viewer.post("/v1/rulesets/1/train")
            assert refused.status_code == 403
    finally:
        await service.close()
