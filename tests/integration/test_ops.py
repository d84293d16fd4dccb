"""What SREs run: manifests, alerts (promtool), dashboard, and a real Prometheus scrape."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import kubernetes_validate
import orjson
import uvicorn
import yaml

from services.http import create_app
from services.runtime.embedded import free_port
from services.runtime.main import QuietServer
from services.settings import Settings
from tests.helpers.database import drained
from tests.helpers.factories import at, page, track
from tests.helpers.kafka import produce
from tests.helpers.waiting import wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_kubernetes_manifests_validate_against_the_schemas():
    kinds = set()
    for doc in manifests():
        kinds.add(doc["kind"])
        if doc["kind"] == "ScaledObject":
            continue  # a KEDA custom resource: checked below
        kubernetes_validate.validate(doc, "1.37", strict=True)
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "ScaledObject",
    }


def test_deployment_and_autoscaling_fit_the_service():
    by_kind = {d["kind"]: d for d in manifests()}
    config = by_kind["ConfigMap"]["data"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    scaled = by_kind["ScaledObject"]["spec"]
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config["LEADSCORE_CONSUMER_GROUP"]
    assert trigger["metadata"]["topic"] == Settings.model_fields["topic_events"].default
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    # More instances than partitions would idle in the group.
    assert scaled["maxReplicaCount"] == int(config["LEADSCORE_TOPIC_PARTITIONS"])
    assert scaled["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    job = by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"]


def test_alert_rules_pass_promtool_and_link_the_runbook():
    assert shutil.which("promtool"), "promtool comes with Debian's prometheus package"
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runbook = (DEPLOY.parent / "docs/operations/runbook.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", runbook, flags=re.M)
    }
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = set()
    for rule in rules["groups"][0]["rules"]:
        names.add(rule["alert"])
        assert rule["annotations"]["runbook_url"].split("#")[1] in anchors, rule["alert"]
    assert {
        "LeadscoreBrokerLostLog",
        "LeadscoreOutboxRecordsFailed",
        "LeadscoreLoopRestarting",
        "LeadscoreNoAccountTransitions",
        "LeadscoreChallengerFailing",
        "LeadscoreWebhookDeliveriesFailed",
        "LeadscoreWebhookBacklogOld",
        "LeadscoreRuleSetUnusable",
        "LeadscoreErasuresFailing",
        "LeadscoreErasuresWaiting",
    } < names
    assert len(names) == 16


def test_dashboard_queries_name_real_metrics(admin_container):
    exported = {m.name for m in admin_container.metrics.registry.collect()} | {
        f"{m.name}_total" for m in admin_container.metrics.registry.collect()
    }
    dashboard = orjson.loads((DEPLOY / "grafana" / "leadscore.json").read_bytes())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"leadscore_[a-z_]+", target["expr"]))
    buckets = {u for u in used if u.endswith("_bucket")}
    assert used - buckets <= exported, used - buckets - exported
    for wanted in (
        "leadscore_events_consumed_total",
        "leadscore_consumer_lag_records",
        "leadscore_transitions_total",
        "leadscore_dlq_records_total",
        "leadscore_outbox_pending_records",
        "leadscore_sla_breaches_total",
        "leadscore_active_ruleset_version",
        "leadscore_batch_processing_seconds_bucket",
    ):
        assert wanted in used
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"kafka", "postgres", "leadscore", "prometheus", "grafana"} <= set(compose["services"])
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka")


def start_prometheus(binary: str, folder: Path, web_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_prometheus_scrapes_the_running_service(service, settings, tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package provides the server"
    port, web = free_port(), free_port()
    server = QuietServer(
        uvicorn.Config(
            create_app(service.container),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "leadscore",
                        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                    }
                ],
            }
        )
    )
    process = start_prometheus(prometheus, tmp_path, web)
    try:
        await wait_for(lambda: server.started, what="the service's HTTP server")
        docs = [
            page("/pricing", user="p1", when=at(0)),
            track("Demo Requested", user="p1", when=at(0, hours=1)),
            page("/blog", user="p2", when=at(0)),
        ]
        await produce(settings, [*docs, b"{broken"])
        await wait_for(lambda: drained(settings, len(docs) + 1))

        async def query(expr: str) -> list[dict]:
            async with httpx.AsyncClient() as client:
                try:
                    body = (
                        await client.get(
                            f"http://127.0.0.1:{web}/api/v1/query", params={"query": expr}
                        )
                    ).json()
                except (httpx.HTTPError, ValueError):
                    # Not up yet, or still starting: Prometheus answers in plain text then.
                    return []
            return body.get("data", {}).get("result", [])

        async def scored() -> list[dict]:
            result = await query('leadscore_events_consumed_total{result="scored"}')
            return result if result and float(result[0]["value"][1]) == len(docs) else []

        [sample] = await wait_for(scored, timeout=60, what="a scrape with the scored events")
        assert sample["metric"]["job"] == "leadscore"
        assert sample["metric"]["instance"] == f"127.0.0.1:{port}"
        [dlq] = await query("leadscore_dlq_records_total")
        assert (dlq["metric"]["reason"], float(dlq["value"][1])) == ("invalid_json", 1.0)
        [version] = await query("leadscore_active_ruleset_version")
        assert float(version["value"][1]) == 1.0
        lag = await query("leadscore_consumer_lag_records")
        assert {m["metric"]["partition"] for m in lag} <= {str(p) for p in range(6)}
    finally:
        process.terminate()
        process.wait(10)
        server.should_exit = True
        await serving
