"""The admin's command line against a real HTTP server, and offline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from scoring_service.rule_set_files import starter_document
from services.http import create_app
from services.runtime.embedded import free_port
from services.runtime.main import QuietServer
from tests.helpers.service import TOKENS
from tests.helpers.waiting import wait_for
from tests.integration.test_admin_api import with_rule_points

ROOT = Path(__file__).resolve().parents[2]


async def leadscore(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.runtime.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


@contextlib.asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    """`app` on a real HTTP server at 127.0.0.1:`port` while the block runs."""
    server = QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, what="HTTP server")
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def api_server(container) -> AsyncIterator[str]:
    """The real app of `container` on a free port; yields its address."""
    port = free_port()
    async with serving(create_app(container), port):
        yield f"http://127.0.0.1:{port}"


async def test_offline_validate_and_simulate(tmp_path):
    code, out = await leadscore("rules", "validate", "scoring_service/starter_ruleset.yaml")
    rules = len(starter_document().rules)
    assert code == 0 and f"valid rule set 'starter' with {rules} rules" in out
    header = "name: x\nthresholds: {mql: 1, sal: 2}\nrules:\n"
    for name, rules, problem in [
        (
            "bad.yaml",
            "  - {id: a, category: engagement, when: {path: '/x', regex: y}}\n",
            "4:35: rules[0].when: unknown condition 'regex'",
        ),
        (
            "misspelt.yaml",
            "  - id: a\n    category: engagement\n    when: {path: '/x'}\n    pionts: 5\n",
            "7:5: rules[0].pionts: 'pionts' is not a field here; did you mean 'points'?",
        ),
    ]:
        path = tmp_path / name
        path.write_text(header + rules)
        code, out = await leadscore("rules", "validate", str(path))
        assert code == 1 and f"{path}:{problem}" in out
    code, out = await leadscore(
        "simulate", "scoring_service/starter_ruleset.yaml", "examples/journey.jsonl"
    )
    assert code == 0
    assert "u-42: sal" in out
    assert "u-42: lead -> mql (threshold)" in out
    assert "u-42: mql -> sal (trigger demo-request)" in out


async def test_publish_diff_activate_through_the_api(admin_container, tmp_path):
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["admin"]}
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump(with_rule_points("pricing-page", 20)))
        code, out = await leadscore("rules", "publish", str(rules), "--comment", "q4", env=env)
        assert (code, out.strip()) == (0, "published version 2 (starter)")
        code, out = await leadscore("rules", "diff", "1", "2", env=env)
        assert code == 0
        assert out.splitlines() == ["version 1 -> 2", "~ rule pricing-page.points: 15.0 -> 20.0"]
        code, out = await leadscore("rules", "activate", "2", env=env)
        assert (code, out.strip()) == (0, "version 2 is active")
        code, out = await leadscore("rules", "activate", "7", env=env)
        assert code == 1 and "404 ruleset_not_found" in out
        viewer = {**env, "LEADSCORE_API_TOKEN": TOKENS["viewer"]}
        code, out = await leadscore("rules", "activate", "1", env=viewer)
        assert code == 1 and "403 forbidden" in out


async def test_the_review_report_from_the_command_line(admin_container):
    from services.adapters.postgres.db import driver
    from tests.integration.test_review import SINCE, UNTIL, plant

    async with admin_container.db.connect() as conn:
        await plant(await driver(conn))
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["viewer"]}
        window = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
        code, out = await leadscore("review", *window, env=env)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].startswith("version 1: 5 leads handed off from 2026-10-01")
        assert "  accepted: 4 (80.0%, median 1.0 h after the handoff)" in lines
        assert "  converted: 0 (0.0%)" in lines
        assert (
            "  against the 5 leads sales qualified: precision 60.0%, recall 60.0%, 2 missed"
            in lines
        )
        assert "  rule demo-request: lift 2.00 (won leads 1, lost leads 0)" in lines
        assert "  score 50-75: 1 leads, qualified 100.0%, won 100.0%" in lines
        assert lines[-1].startswith("  accounts: 0 reached mqa")
        code, out = await leadscore("review", "--version", "9", env=env)
        assert code == 1 and "404 ruleset_not_found" in out


async def test_the_journey_report_from_the_command_line(admin_container, settings):
    from tests.integration.test_journey import PLANTED, WINDOW, plant_history

    await plant_history(settings)
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["viewer"]}
        code, out = await leadscore(
            "journey", "--since", WINDOW["since"], "--until", WINDOW["until"], env=env
        )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("buyer journey, moves from 2026-10-01")
    assert (
        "Brand consideration: 4 leads and 0 accounts now; 10 entered, median 2.0 days in it; "
        "then mql 30.0%, sql 10.0%, won 10.0%" in lines
    )
    assert "  came from: search 6, paid 3, email 1" in lines
    assert f"  next step {PLANTED}: lift 7.00 (moved on 4 of 4, stalled 0 of 6)" in lines


async def test_propose_challenge_and_review_side_by_side(admin_container):
    from services.adapters.postgres.db import driver
    from tests.integration.test_proposal import SINCE, UNTIL, plant_outcomes

    async with admin_container.db.connect() as conn:
        await plant_outcomes(await driver(conn), leads=300, seed=4)
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["admin"]}
        window = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
        code, out = await leadscore("propose", "1", *window, "--seed", "5", env=env)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].startswith("published version 2 (inactive), fitted on 300 leads")
        assert "held-out AUC on 90 leads" in lines[0]
        assert any(line.startswith("  pricing-page: 15 -> ") for line in lines)
        code, out = await leadscore("challenge", "2", env=env)
        assert code == 0, out
        assert out.startswith("version 2 now scores every live event next to the active")
        code, out = await leadscore("challenge", "2", env=env)
        assert code == 1 and "409 challenger_running" in out
        code, out = await leadscore("review", "--version", "2", *window, env=env)
        assert code == 0, out
        assert out.startswith("version 2 (the challenger's own stages): 0 leads handed off")
        assert "next to the active version:" in out
        assert "version 1: 300 leads handed off" in out
        code, out = await leadscore("challenge", "2", "--stop", env=env)
        assert code == 0 and "no longer the challenger" in out
        few = ["--since", "2020-01-01T00:00:00Z", "--until", "2020-02-01T00:00:00Z"]
        code, out = await leadscore("propose", "1", *few, env=env)
        assert code == 1 and "422 too_few_outcomes: 0 decided leads" in out


@pytest.mark.parametrize("build", ["as built", "interpreted"])
async def test_the_installed_command_runs_from_any_directory(tmp_path, build):
    # The entry point pip installed, run from a folder that is not the repository, with
    # nothing on PYTHONPATH: the packages (and the compiled core, where built) must be found
    # the way the installation says.
    command = Path(sys.executable).parent / "leadscore"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if build == "interpreted":
        env["LEADSCORE_INTERPRETED"] = "1"
    journey = tmp_path / "journey.jsonl"
    journey.write_bytes((ROOT / "examples" / "journey.jsonl").read_bytes())

    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(command),
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode()

    code, out = await run("--help")
    assert code == 0 and "usage: leadscore" in out, out
    code, out = await run("token", "ci", "viewer")
    assert code == 0 and "ci:viewer:" in out, out
    code, out = await run(
        "simulate", str(ROOT / "scoring_service/starter_ruleset.yaml"), "journey.jsonl"
    )
    assert code == 0 and "u-42: mql -> sal (trigger demo-request)" in out, out
    probe = (
        "import scoring_service.engine as e, stage_router.compiled as c; print(c.is_compiled(e))"
    )
    python = Path(sys.executable)
    process = await asyncio.create_subprocess_exec(
        str(python), "-c", probe, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
    )
    compiled = (await process.communicate())[0].decode().strip()
    if build == "interpreted":
        assert compiled == "False"
    elif os.environ.get("LEADSCORE_EXPECT_COMPILED"):  # make test, after make compile
        assert compiled == "True"


async def test_send_checks_every_line_first_and_sends_only_the_good_ones(settings, tmp_path):
    from services.adapters.kafka import ensure_topics
    from tests.helpers.kafka import read_all

    await ensure_topics(settings)  # as the service does when it starts
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"type": "page", "userId": "u-1", "messageId": "m-1", "properties": {"path": "/"}}\n'
        "\n"
        '{"type": "page", "messageId": "m-2", "properties": {"path": "/pricing"}}\n'
        '{"type": "track", "userId": "u-1", "messageId": "m-3", "event": "Demo Requested"}\n'
    )
    env = {
        "LEADSCORE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LEADSCORE_TOPIC_EVENTS": settings.topic_events,
    }
    status, output = await leadscore("send", str(events), env=env)
    assert status == 1
    assert "line 3: missing_identity" in output
    assert f"sent 2 events to {settings.topic_events}" in output
    assert "1 of 3 events were refused" in output
    sent = await read_all(settings, settings.topic_events, expect=2)
    assert sorted(r.key for r in sent) == [b"u-1", b"u-1"]


async def test_send_to_a_stopped_service_says_so_in_one_line(tmp_path):
    from services.runtime.embedded import free_port

    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "page", "userId": "u-1", "messageId": "m-1"}\n')
    closed = f"127.0.0.1:{free_port()}"
    status, output = await leadscore("send", str(events), env={"LEADSCORE_KAFKA_BOOTSTRAP": closed})
    assert status == 1
    assert output.strip().splitlines() == [
        f"error: cannot reach the broker at {closed} (KafkaConnectionError); is the service "
        "running (make run)?"
    ]


async def test_rules_list_names_every_version_and_the_active_one(admin_container):
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["viewer"]}
        code, out = await leadscore("rules", "list", env=env)
    assert code == 0, out
    [line] = out.splitlines()
    assert line.split()[0] == "1" and " starter  active " in line


async def test_a_rule_set_keeps_its_authors_words_through_publish_show_and_diff(
    admin_container, tmp_path
):
    from scoring_service.rule_set_files import starter_text
    from tests.helpers.service import client_for

    starter = starter_text()
    assert "# " in starter  # the starter file explains its rules in comments
    edited = starter.replace(
        "name: starter", "# Q4 review: sales asked for fewer, warmer leads.\nname: starter", 1
    )
    assert edited != starter
    rules = tmp_path / "q4.yaml"
    rules.write_text(edited)
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["admin"]}
        code, out = await leadscore("rules", "publish", str(rules), env=env)
        assert code == 0, out
        code, shown = await leadscore("rules", "show", "2", env=env)
        assert (code, shown) == (0, edited)
        code, first = await leadscore("rules", "show", "1", env=env)
        assert (code, first) == (0, starter)  # published at first start, comments and all
        code, diff = await leadscore("rules", "diff", "1", "2", "--text", env=env)
        assert code == 0
        assert "+# Q4 review: sales asked for fewer, warmer leads.\n" in diff
    async with client_for(admin_container, "viewer") as api:
        version = (await api.get("/v1/rulesets/2")).json()
    assert version["source"] == edited and version["document"]["name"] == "starter"


async def test_dead_letters_are_listed_shown_and_sent_again_once_fixed(service, settings, tmp_path):
    from tests.helpers.database import drained
    from tests.helpers.kafka import produce, read_all

    env = {
        "LEADSCORE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LEADSCORE_TOPIC_EVENTS": settings.topic_events,
        "LEADSCORE_TOPIC_DLQ": settings.topic_dlq,
    }
    stray = {"type": "track", "messageId": "dl-1", "event": "Demo Requested"}
    late = {**stray, "messageId": "dl-2", "userId": "u-late", "timestamp": "soon"}
    await produce(settings, [stray, late])
    await read_all(settings, settings.topic_dlq, expect=2)
    code, out = await leadscore("dead-letters", "list", env=env)
    assert code == 0 and sorted(line.split()[2] for line in out.splitlines()) == [
        "invalid_timestamp",
        "missing_identity",
    ]
    code, out = await leadscore("dead-letters", "list", "--reason", "missing_identity", env=env)
    assert code == 0, out
    [line] = out.splitlines()
    at, _, reason, *_ = line.split()
    assert reason == "missing_identity"
    code, shown = await leadscore("dead-letters", "show", at, env=env)
    assert code == 0 and "error: missing_identity" in shown and '"dl-1"' in shown
    code, out = await leadscore("dead-letters", "resend", at, env=env)
    assert code == 1 and "still refused, not sent: missing_identity" in out
    fixed = tmp_path / "fixed.json"
    fixed.write_text('{"type": "track", "messageId": "dl-1", "userId": "u-dl", "event": "x"}')
    code, out = await leadscore("dead-letters", "resend", at, "--file", str(fixed), env=env)
    assert code == 0, out
    await wait_for(lambda: drained(settings, 3), what="the fixed event scored")
    code, out = await leadscore("dead-letters", "show", "0:999999", env=env)
    assert code == 1 and "no dead letter at 0:999999" in out


async def test_a_persons_export_is_asked_for_by_one_name_and_says_when_nobody_has_it(
    admin_container,
):
    async with api_server(admin_container) as url:
        env = {"LEADSCORE_API_URL": url, "LEADSCORE_API_TOKEN": TOKENS["admin"]}
        code, out = await leadscore("people", "export", "--email", "nobody@example.com", env=env)
        assert code == 1
        assert "404 person_not_found: no lead is known by that email" in out
        code, out = await leadscore(
            "people", "export", "--email", "a@b.c", "--user-id", "u-1", env=env
        )
        assert code == 2 and "not allowed with argument" in out  # one name at a time


async def test_a_person_is_erased_listed_and_let_back_in_from_the_command_line(service, settings):
    from tests.helpers.database import drained
    from tests.helpers.kafka import produce

    visits = [
        {"type": "page", "messageId": f"cli-{n}", "userId": "u-cli", "properties": {"path": "/x"}}
        for n in range(3)
    ]
    await produce(settings, visits)
    await wait_for(lambda: drained(settings, len(visits)), what="the visits")
    async with api_server(service.container) as url:
        env = {"LEADSCORE_API_URL": url}
        code, out = await leadscore("people", "erase", "--user-id", "u-cli", "--wait", env=env)
        assert code == 0, out
        assert " erase " in out and " done " in out and "lead_events 3" in out
        assert "u-cli" not in out  # the request line never names the person
        code, listed = await leadscore("people", "requests", env=env)
        assert code == 0 and listed.splitlines()[0].split()[0] == out.split()[0]
        code, out = await leadscore("people", "unsuppress", "--user-id", "u-cli", env=env)
        assert code == 0 and "unsuppress" in out and "suppressed_keys 1" in out
        code, out = await leadscore("people", "unsuppress", "--user-id", "u-cli", env=env)
        assert code == 1 and "404 not_suppressed" in out
