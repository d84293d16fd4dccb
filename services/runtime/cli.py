"""The `leadscore` command line: run the service, and administer rule sets.

Rule-set commands talk to a running service (LEADSCORE_API_URL, default
http://127.0.0.1:8000, with LEADSCORE_API_TOKEN as the bearer token), except `rules validate`
and `simulate`, which work offline on files.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from scoring_service.engine import Engine
from scoring_service.rule_set_files import RuleSetInvalid, load_document, problem_lines
from scoring_service.rules import compile_ruleset
from scoring_service.simulation import simulate
from stage_router.lifecycle import STAGES


class CliError(Exception):
    """A failure to report in one line, with a non-zero exit."""


def _client() -> httpx.Client:
    url = os.environ.get("LEADSCORE_API_URL", "http://127.0.0.1:8000")
    token = os.environ.get("LEADSCORE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Publishing and activating are quick; 30 s only guards against a hung server.
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def _call(method: str, path: str, *, source: tuple[str, str] | None = None, **kwargs: Any) -> Any:
    """`source`: the file a request carries (its name and text), to place its problems."""
    with _client() as client:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the service at {client.base_url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"error": "http_error", "detail": response.text}
        raise CliError(_describe_error(response.status_code, body, source))
    return response.json() if response.content else None


def _describe_error(
    status: int, body: dict[str, Any], source: tuple[str, str] | None = None
) -> str:
    detail = body.get("detail")
    if body.get("error") == "invalid_ruleset" and isinstance(detail, list) and source:
        return _placed(*source, detail)
    return f"{status} {body.get('error')}: {detail}"


def _placed(name: str, text: str, problems: list[dict[str, Any]]) -> str:
    """A rule set's problems as compilers print theirs: `file:line:column: where: what`."""
    lines = [f"{name} is not a valid rule set:"]
    for problem in problem_lines(text, problems):
        where = f"{name}:{problem['line']}:{problem['column']}: " if problem["line"] else ""
        lines.append(f"  {where}{problem['loc']}: {problem['msg']}")
    return "\n".join(lines)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_validate(args: argparse.Namespace) -> None:
    text = _read(args.file)
    try:
        document = load_document(text)
    except RuleSetInvalid as exc:
        raise CliError(_placed(args.file, _text(text), exc.problems)) from exc
    print(f"{args.file}: valid rule set {document.name!r} with {len(document.rules)} rules")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def cmd_publish(args: argparse.Namespace) -> None:
    params = {"comment": args.comment} if args.comment else {}
    text = _read(args.file)
    body = _call(
        "POST",
        "/v1/rulesets",
        source=(args.file, _text(text)),
        content=text,
        params=params,
        headers={"Content-Type": "application/yaml"},
    )
    print(f"published version {body['version']} ({body['name']})")


def cmd_activate(args: argparse.Namespace) -> None:
    body = _call(
        "POST",
        f"/v1/rulesets/{args.version}/activate",
        params={"rescore": "true"} if args.rescore else {},
    )
    print(f"version {body['version']} is active")
    promoted = body.get("challenger")
    if promoted:
        print(
            f"it was the challenger: {promoted['leads']} leads took its scores, "
            f"{promoted['moved']} moved to the stage it gave them (transitions, reason rescore)"
        )
    if body.get("rescore_job"):
        print(f"re-scoring: job {body['rescore_job']} (leadscore jobs {body['rescore_job']})")


def cmd_show(args: argparse.Namespace) -> None:
    from schemas.api import RuleSetPublic
    from services.console.formats import source_text

    version = RuleSetPublic.model_validate(_call("GET", f"/v1/rulesets/{args.version}"))
    print(source_text(version), end="")


def cmd_diff(args: argparse.Namespace) -> None:
    if args.text:
        from schemas.api import RuleSetPublic
        from services.console.formats import source_text

        old, new = (
            RuleSetPublic.model_validate(_call("GET", f"/v1/rulesets/{v}"))
            for v in (args.a, args.b)
        )
        unified = difflib.unified_diff(
            source_text(old).splitlines(keepends=True),
            source_text(new).splitlines(keepends=True),
            fromfile=f"version {args.a}",
            tofile=f"version {args.b}",
        )
        print("".join(unified), end="")
        return
    body = _call("GET", f"/v1/rulesets/{args.a}/diff/{args.b}")
    rules = body["rules"]
    lines = [f"version {args.a} -> {args.b}"]
    lines += [f"+ rule {r}" for r in rules["added"]]
    lines += [f"- rule {r}" for r in rules["removed"]]
    for rule in rules["changed"]:
        for change in rule["changes"]:
            lines.append(
                f"~ rule {rule['id']}.{change['field']}: "
                f"{json.dumps(change['from'])} -> {json.dumps(change['to'])}"
            )
    for change in body["settings"]:
        lines.append(
            f"~ {change['field']}: {json.dumps(change['from'])} -> {json.dumps(change['to'])}"
        )
    print("\n".join(lines) if len(lines) > 1 else f"versions {args.a} and {args.b} are the same")


def cmd_impact(args: argparse.Namespace) -> None:
    accepted = _call("POST", f"/v1/rulesets/{args.version}/impact", json={"days": args.days})
    job_id = accepted["job_id"]
    print(f"impact report: job {job_id}", file=sys.stderr)
    while True:
        job = _call("GET", f"/v1/jobs/{job_id}")
        if job["status"] != "running":
            break
        progress = job["progress"]
        print(f"  {progress['done']}/{progress['total'] or '?'} leads", file=sys.stderr)
        time.sleep(1)
    if job["status"] == "failed":
        raise CliError(f"the impact job failed: {job['error']}")
    if args.json:
        print(json.dumps(job["result"], indent=2))
        return
    print("\n".join(_impact_lines(job["result"], args.days)))


def _impact_lines(body: dict[str, Any], days: float) -> list[str]:
    """The impact report in words: stages side by side in lifecycle order, then what moved."""
    active, candidate = body["active_version"], body["candidate_version"]
    lines = [
        f"version {candidate} against the active version {active}: {body['leads']} leads "
        f"replayed (their last {days:g} days), {body['moved']} would change stage",
        f"  {'stage':<14}{'active':>8}{'candidate':>11}",
    ]
    stages = body["stages"]
    for stage in STAGES:  # lifecycle order: a stored report's keys come back in any
        if stage in stages:
            counts = stages[stage]
            lines.append(f"  {stage:<14}{counts['active']:>8}{counts['candidate']:>11}")
    for example in body["moved_examples"][:10]:
        was, will = example["active"], example["candidate"]
        why = ", ".join(f"{r['rule_id']} {r['points_difference']:+g}" for r in example["rules"][:3])
        lines.append(
            f"  {example['lead_id']}: {was['stage']} {was['total']:g} -> "
            f"{will['stage']} {will['total']:g}" + (f" ({why})" if why else "")
        )
    for rule in body["rules"][:10]:
        lines.append(
            f"  rule {rule['rule_id']}: {rule['points_active']:g} -> "
            f"{rule['points_candidate']:g} points in all ({rule['difference']:+g}, "
            f"{rule['leads_affected']} leads)"
        )
    accounts = body.get("accounts")
    if accounts:
        mqa = accounts["stages"]["mqa"]
        lines.append(
            f"  accounts: {accounts['accounts']}; mqa {mqa['active']} -> {mqa['candidate']}"
        )
    for name, score in body.get("scores", {}).items():
        lines.append(
            f"  score {name}: mean {_number(score['mean_active'])} -> "
            f"{_number(score['mean_candidate'])}, qualified {score['qualified_active']} -> "
            f"{score['qualified_candidate']}"
        )
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def cmd_list(args: argparse.Namespace) -> None:
    versions = _call("GET", "/v1/rulesets")
    if args.json:
        print(json.dumps(versions, indent=2))
        return
    if not versions:
        print("no rule set is published")
        return
    for v in versions:
        live = "  active" if v["active"] else ""
        comment = f"  {v['comment']}" if v["comment"] else ""
        print(
            f"{v['version']:>4}  {v['published_at'][:16].replace('T', ' ')}  "
            f"{v['published_by']:<12} {v['name']}{live}{comment}"
        )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _review_lines(body: dict[str, Any]) -> list[str]:
    """One version's outcome report in words."""
    own = " (the challenger's own stages)" if body["scored_by"] == "challenger" else ""
    lines = [
        f"version {body['version']}{own}: {body['handed_off']} leads handed off "
        f"from {body['since']} to {body['until']}"
    ]
    for outcome, figures in body["outcomes"].items():
        median = figures["median_seconds"]
        after = "" if median is None else f", median {median / 3600:.1f} h after the handoff"
        lines.append(f"  {outcome}: {figures['leads']} ({_share(figures['share'])}{after})")
    mql = body["mql_definition"]
    if mql["sales_qualified"]:
        lines.append(
            f"  against the {mql['sales_qualified']} leads sales qualified: precision "
            f"{_share(mql['precision'])}, recall {_share(mql['recall'])}, "
            f"{mql['missed']} missed"
        )
    else:  # no outcome known yet: a precision of 0% would read as a verdict
        lines.append("  sales has qualified no lead yet: precision -, recall -")
    for band in body["score_bands"]["fixed"]:
        upper = "+" if band["to"] is None else f"-{band['to']:g}"
        lower = "below" if band["from"] is None else f"{band['from']:g}"
        lines.append(
            f"  score {lower}{upper}: {band['leads']} leads, qualified "
            f"{_share(band['qualified_share'])}, won {_share(band['won_share'])}"
        )
    for rule in body["rules"][:10]:
        lift = "-" if rule["lift"] is None else f"{rule['lift']:.2f}"
        lines.append(
            f"  rule {rule['rule_id']}: lift {lift} (won leads {rule['won_leads_hit']}, "
            f"lost leads {rule['lost_leads_hit']})"
        )
    accounts = body["accounts"]
    outcomes = ", ".join(
        f"{k} {v['accounts']} ({_share(v['share'])})" for k, v in accounts["outcomes"].items()
    )
    lines.append(
        f"  accounts: {accounts['mqa']} reached mqa; members {outcomes}; precision "
        f"{_share(accounts['precision'])}, recall {_share(accounts['recall'])}, "
        f"{accounts['missed']} missed"
    )
    return lines


def cmd_review(args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("since", args.since), ("until", args.until)) if v}
    if args.version is not None:
        params["version"] = str(args.version)
    body = _call("GET", "/v1/review", params=params)
    if args.json:
        print(json.dumps(body, indent=2))
        return
    lines = _review_lines(body)
    if body.get("compared_with"):
        lines += ["", "next to the active version:", *_review_lines(body["compared_with"])]
    print("\n".join(lines))


def _journey_lines(body: dict[str, Any]) -> list[str]:
    """The journey report in words: a line per phase, its channels and next steps."""
    lines = [f"buyer journey, moves from {body['since']} to {body['until']}"]
    for phase in body["phases"]:
        median = phase["median_seconds_in_phase"]
        stay = "" if median is None else f", median {median / 86400:.1f} days in it"
        conversion = phase["conversion"]
        reached = ", ".join(
            f"{stage} {_share(conversion[stage]['rate'])}" for stage in ("mql", "sql", "won")
        )
        lines.append(
            f"{phase['name']}: {phase['leads_now']} leads and {phase['accounts_now']} accounts "
            f"now; {phase['entered']} entered{stay}; then {reached}"
        )
        if phase["channels"]:
            mix = ", ".join(f"{channel} {n}" for channel, n in phase["channels"].items())
            lines.append(f"  came from: {mix}")
        for step in phase["next_steps"][:5]:
            lines.append(
                f"  next step {step['content']}: lift {step['lift']:.2f} "
                f"(moved on {step['moved_on']} of {phase['moved_on']}, "
                f"stalled {step['stalled']} of {phase['stalled']})"
            )
    return lines


def cmd_journey(args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("since", args.since), ("until", args.until)) if v}
    body = _call("GET", "/v1/journey", params=params)
    if args.json:
        print(json.dumps(body, indent=2))
        return
    print("\n".join(_journey_lines(body)))


def cmd_challenge(args: argparse.Namespace) -> None:
    if args.stop:
        _call("DELETE", f"/v1/rulesets/{args.version}/challenge")
        print(f"version {args.version} is no longer the challenger; its state is dropped")
        return
    body = _call("POST", f"/v1/rulesets/{args.version}/challenge")
    print(
        f"version {body['version']} now scores every live event next to the active version "
        f"(nothing published); warming {body['leads_live']} existing leads: "
        f"leadscore jobs {body['warm_up_job']}"
    )


def cmd_propose(args: argparse.Namespace) -> None:
    request: dict[str, Any] = {"target": args.target, "seed": args.seed}
    request.update({k: v for k, v in (("since", args.since), ("until", args.until)) if v})
    body = _call("POST", f"/v1/rulesets/{args.version}/propose", json=request)
    if args.json:
        print(json.dumps(body, indent=2))
        return
    print(
        f"published version {body['version']} (inactive), fitted on {body['samples']} leads "
        f"({body['good_outcomes']} {body['target']}); held-out AUC on {body['held_out']} leads: "
        f"{body['auc_old']:.3f} (version {body['source_version']}) -> "
        f"{body['auc_proposed']:.3f} (proposed)"
    )
    for rule in body["rules"]:
        print(f"  {rule['rule_id']}: {rule['old_points']:g} -> {rule['new_points']:g}")
    if body["unchanged"]:
        print(f"  kept (fewer than 10 decided leads hit them): {', '.join(body['unchanged'])}")


def cmd_train(args: argparse.Namespace) -> None:
    """A learned score trained on the outcomes of a version's handoffs, as a new version."""
    request: dict[str, Any] = {"score": args.score, "target": args.target}
    request.update({k: v for k, v in (("since", args.since), ("until", args.until)) if v})
    # Training replays every decided lead's history with its account: 20 s or so for a
    # million events, longer for more, so more than the usual guard against a hung server.
    body = _call("POST", f"/v1/rulesets/{args.version}/train", json=request, timeout=900)
    if args.json:
        print(json.dumps(body, indent=2))
        return
    report = body["report"]
    print(
        f"published version {body['version']} (inactive) with the learned score "
        f"{body['score']!r}: {report['samples']} decided handoffs ({report['positives']} "
        f"{body['target']}), trained on {report['trained_on']}, judged on the latest "
        f"{report['held_out']}"
    )
    print(
        f"  AUC {report['auc']} (the rules' score: {report['auc_rules']}), log loss "
        f"{report['log_loss']}, worst calibration error {report['calibration_error']}"
    )
    for band, row in report["bands"].items():
        print(f"  band {band}: {row['leads']} leads, {row['rate']:.0%} {body['target']}")
    for feature in report["features"][:10]:
        print(f"  {feature['feature']}: {feature['weight']:+.3f}")


def cmd_job(args: argparse.Namespace) -> None:
    print(json.dumps(_call("GET", f"/v1/jobs/{args.job_id}"), indent=2))


PERSON_IDS = ("lead_id", "user_id", "anonymous_id", "email")


def _person(args: argparse.Namespace) -> dict[str, str]:
    """The one id or address the command names a person by."""
    return {name: value for name in PERSON_IDS if (value := getattr(args, name)) is not None}


def _request_line(request: dict[str, Any]) -> str:
    removed = request.get("removed") or {}
    rows = ", ".join(f"{table} {n}" for table, n in removed.items()) or "nothing removed"
    outcome = request["status"] + (f" ({request['failure']})" if request.get("failure") else "")
    return (
        f"{request['id']}  {request['kind']:<10} {outcome:<8} by {request['found_by']:<12} "
        f"{request['requested_at'][:19]}  {request['requested_by']}: {rows}"
    )


def cmd_export(args: argparse.Namespace) -> None:
    """Everything held on one person, as the API's JSON document (right of access)."""
    print(json.dumps(_call("GET", "/v1/people/export", params=_person(args)), indent=2))


def cmd_erase(args: argparse.Namespace) -> None:
    """Queue a person's erasure; with --wait, follow it until it is carried out."""
    body: dict[str, Any] = {**_person(args), "suppress": not args.no_suppress}
    request = _call("POST", "/v1/people/erasures", json=body)
    deadline = time.monotonic() + args.timeout
    while args.wait and request["status"] == "received" and time.monotonic() < deadline:
        time.sleep(0.5)  # a person waiting at a terminal; the API has no push
        request = _call("GET", f"/v1/people/requests/{request['id']}")
    print(_request_line(request))
    if request["status"] == "failed":
        raise CliError(f"the erasure failed: {request['failure']}")


def cmd_unsuppress(args: argparse.Namespace) -> None:
    print(_request_line(_call("POST", "/v1/people/unsuppress", json=_person(args))))


def cmd_requests(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    listing = _call("GET", "/v1/people/requests", params=params)["requests"]
    if args.json:
        print(json.dumps(listing, indent=2))
        return
    for request in listing:
        print(_request_line(request))


def cmd_simulate(args: argparse.Namespace) -> None:
    text = _read(args.rules)
    try:
        document = load_document(text)
    except RuleSetInvalid as exc:
        raise CliError(_placed(args.rules, _text(text), exc.problems)) from exc
    events: list[Any] = []
    for line in _read(args.events).splitlines():
        if line.strip():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                events.append(line)  # reported as rejected, like the service would
    result = simulate(Engine(compile_ruleset(document, 0)), events, now=time.time())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for lead in result["leads"]:
        score = lead["score"]
        print(
            f"{lead['lead_id']}: {lead['stage']} (total {score['total']}, fit {score['fit']}, "
            f"engagement {score['engagement']})"
        )
    for t in result["transitions"]:
        why = t["reason"] + (f" {t['rule_id']}" if t["rule_id"] else "")
        print(f"  {t['occurred_at']} {t['lead_id']}: {t['from_stage']} -> {t['to_stage']} ({why})")
    for r in result["rejected"]:
        print(f"  line {r['index'] + 1} rejected: {r['error']}: {r['detail']}")


def cmd_token(args: argparse.Namespace) -> None:
    from services.auth import new_token

    token, entry = new_token(args.name, args.role)
    print(f"token (give it to the client; it is not stored): {token}")
    print(f"add to LEADSCORE_API_TOKENS (comma-separated): {entry}")


def cmd_send(args: argparse.Namespace) -> None:
    from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

    from scoring_service.intake import Rejection, parse_event
    from services.adapters.kafka import bootstrap_of, send_lines
    from services.settings import Settings

    # Checked here as the service will check them, so a mistake is told now, not found
    # later on the dead-letter topic.
    now, good, refused = time.time(), [], []
    for number, line in enumerate(_read(args.file).splitlines(), start=1):
        if not line.strip():
            continue
        verdict = parse_event(line, now=now, fallback_ts=now)
        if isinstance(verdict, Rejection):
            refused.append(f"  line {number}: {verdict.code}: {verdict.detail}")
        else:
            good.append(line)
    if refused:
        print(f"refused, not sent ({len(refused)}):", *refused, sep="\n", file=sys.stderr)
    settings = Settings()
    broker = bootstrap_of(settings)
    # The client narrates each failed connection; the one line below says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        count = asyncio.run(send_lines(good, settings)) if good else 0
    except UnknownTopicOrPartitionError as exc:
        raise CliError(
            f"the broker at {broker} has no topic {settings.topic_events}; the service "
            "creates it when it starts (make run)"
        ) from exc
    except (KafkaError, OSError) as exc:
        raise CliError(
            f"cannot reach the broker at {broker} ({type(exc).__name__}); is the service "
            "running (make run)?"
        ) from exc
    print(f"sent {count} events to {settings.topic_events}")
    if refused:
        raise CliError(f"{len(refused)} of {len(refused) + count} events were refused")


def cmd_dead_letters(args: argparse.Namespace) -> None:
    """Events and feedback the service could not use, from the dead-letter topic: list them
    by reason and time, show one, send one again once fixed."""
    from aiokafka.errors import KafkaError

    from scoring_service.intake import Rejection, parse_event
    from services.adapters.kafka import (
        bootstrap_of,
        dead_letter_at,
        read_dead_letters,
        send_lines,
    )
    from services.app.dead_letters import view
    from services.settings import Settings

    settings = Settings()
    broker = bootstrap_of(settings)
    # The client narrates each failed connection; the one line below says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if args.action == "list":
            since = None
            if args.since:
                try:
                    since = datetime.fromisoformat(args.since).timestamp()
                except ValueError as exc:
                    raise CliError(f"--since {args.since!r} is not ISO-8601") from exc
            records = asyncio.run(read_dead_letters(settings, since=since, limit=args.limit))
            letters = [view(r) for r in records]
            letters = [v for v in letters if not args.reason or v.error == args.reason]
            for v in letters:
                print(f"{v.at}  {v.received.isoformat()[:19]}  {v.error}  {v.detail[:100]}")
            if not letters:
                print(f"no dead letters on {settings.topic_dlq}")
            return
        partition, _, offset = args.at.partition(":")
        if not (partition.isdigit() and offset.isdigit()):
            raise CliError(f"{args.at!r}: name a dead letter as PARTITION:OFFSET, as list shows")
        record = asyncio.run(dead_letter_at(settings, int(partition), int(offset)))
        if record is None:
            raise CliError(f"no dead letter at {args.at} on {settings.topic_dlq}")
        if args.action == "show":
            letter = view(record)
            print(f"error: {letter.error}\ndetail: {letter.detail}\nfrom: {letter.source}")
            print(letter.value)
            return
        # resend: the fixed text if given, else the same bytes (after a rule-set fix)
        fixed: bytes = _read(args.file).strip() if args.file else (record.value or b"")
        verdict = parse_event(fixed, now=time.time(), fallback_ts=time.time())
        if isinstance(verdict, Rejection):
            raise CliError(f"still refused, not sent: {verdict.code}: {verdict.detail}")
        asyncio.run(send_lines([fixed], settings))
        print(f"sent {args.at} again to {settings.topic_events}")
    except (KafkaError, OSError) as exc:
        raise CliError(
            f"cannot reach the broker at {broker} ({type(exc).__name__}); is the service "
            "running (make run)?"
        ) from exc


def cmd_migrate(_: argparse.Namespace) -> None:
    from services.adapters.postgres import db, rule_set_store
    from services.adapters.postgres.db import connection
    from services.settings import Settings

    async def migrate() -> None:
        settings = Settings()
        if settings.database_url is None:
            raise CliError("LEADSCORE_DATABASE_URL is not set")
        engine = db.create_engine(settings.database_url.get_secret_value())
        try:
            await db.migrate(engine)
            async with connection(engine) as pg:
                await rule_set_store.ensure_starter(pg)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    print("database schema is up to date")


def cmd_run(_: argparse.Namespace) -> None:
    from services.runtime.main import run

    run()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="leadscore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command")
    commands.add_parser("run", help="run the service (the default)").set_defaults(func=cmd_run)
    commands.add_parser("migrate", help="apply database migrations and exit").set_defaults(
        func=cmd_migrate
    )
    send = commands.add_parser("send", help="produce a JSON-lines file of events to the topic")
    send.add_argument("file")
    send.set_defaults(func=cmd_send)
    token = commands.add_parser("token", help="make an API token and its configuration entry")
    token.add_argument("name")
    token.add_argument("role", choices=["admin", "viewer", "ingest"])
    token.set_defaults(func=cmd_token)
    sim = commands.add_parser("simulate", help="score events under a rule-set file, offline")
    sim.add_argument("rules")
    sim.add_argument("events", help="JSON lines, one Segment event each")
    sim.add_argument("--json", action="store_true", help="print the full result as JSON")
    sim.set_defaults(func=cmd_simulate)
    review = commands.add_parser("review", help="what sales did with a version's handoffs")
    review.add_argument("--since", help="ISO-8601 with offset (default: 90 days ago)")
    review.add_argument("--until", help="ISO-8601 with offset (default: now)")
    review.add_argument("--version", type=int, help="default: the active version")
    review.add_argument("--json", action="store_true", help="print the whole report as JSON")
    review.set_defaults(func=cmd_review)
    journey = commands.add_parser(
        "journey", help="leads per buyer-journey phase, channels and next steps"
    )
    journey.add_argument("--since", help="ISO-8601 with offset (default: 30 days ago)")
    journey.add_argument("--until", help="ISO-8601 with offset (default: now)")
    journey.add_argument("--json", action="store_true", help="print the whole report as JSON")
    journey.set_defaults(func=cmd_journey)
    challenge = commands.add_parser(
        "challenge", help="score live events under a version too, publishing nothing"
    )
    challenge.add_argument("version", type=int)
    challenge.add_argument("--stop", action="store_true", help="stop it and drop its state")
    challenge.set_defaults(func=cmd_challenge)
    propose = commands.add_parser(
        "propose", help="fit a version's points to sales outcomes; publish them as a new one"
    )
    propose.add_argument("version", type=int)
    propose.add_argument("--since", help="handoffs from (ISO-8601 with offset; default a year)")
    propose.add_argument("--until", help="handoffs before (default: now)")
    propose.add_argument("--target", choices=["won", "qualified"], default="won")
    propose.add_argument("--seed", type=int, default=0, help="the held-out split's seed")
    propose.add_argument("--json", action="store_true", help="print the full result as JSON")
    propose.set_defaults(func=cmd_propose)
    training = commands.add_parser(
        "train", help="train a learned score on sales outcomes; publish it as a new version"
    )
    training.add_argument("version", type=int)
    training.add_argument("--score", default="likelihood", help="the learned score's name")
    training.add_argument("--target", choices=["won", "qualified"], default="won")
    training.add_argument("--since", help="handoffs from (ISO-8601 with offset; default a year)")
    training.add_argument("--until", help="handoffs before (default: now)")
    training.add_argument("--json", action="store_true", help="print the full report as JSON")
    training.set_defaults(func=cmd_train)
    dead = commands.add_parser(
        "dead-letters", help="what the service could not use: list, show, send again"
    ).add_subparsers(dest="action", required=True)
    dead_list = dead.add_parser("list", help="dead letters, oldest first")
    dead_list.add_argument("--reason", help="only this error code, e.g. missing_identity")
    dead_list.add_argument("--since", help="ISO-8601 with offset")
    dead_list.add_argument("--limit", type=int, default=100)
    dead_list.set_defaults(func=cmd_dead_letters)
    dead_show = dead.add_parser("show", help="one dead letter: its reason and its bytes")
    dead_show.add_argument("at", help="PARTITION:OFFSET, as list shows")
    dead_show.set_defaults(func=cmd_dead_letters)
    dead_resend = dead.add_parser("resend", help="send it to lead-events again, once fixed")
    dead_resend.add_argument("at", help="PARTITION:OFFSET, as list shows")
    dead_resend.add_argument("--file", help="the fixed event (JSON); default: the same bytes")
    dead_resend.set_defaults(func=cmd_dead_letters)
    people = commands.add_parser("people", help="a person's data on request").add_subparsers(
        dest="people_command", required=True
    )

    def person_named(command: argparse.ArgumentParser) -> None:
        named = command.add_mutually_exclusive_group(required=True)
        for name in PERSON_IDS:
            named.add_argument("--" + name.replace("_", "-"))

    export = people.add_parser("export", help="everything held on one person, as JSON")
    person_named(export)
    export.set_defaults(func=cmd_export)
    erase = people.add_parser(
        "erase", help="erase every row of a person, and keep their events out from now on"
    )
    person_named(erase)
    erase.add_argument(
        "--no-suppress", action="store_true", help="let later events in as a new lead"
    )
    erase.add_argument("--wait", action="store_true", help="wait until it is carried out")
    erase.add_argument("--timeout", type=float, default=60, help="seconds --wait waits")
    erase.set_defaults(func=cmd_erase)
    unsuppress = people.add_parser(
        "unsuppress", help="let an erased person's events in again (they signed up anew)"
    )
    person_named(unsuppress)
    unsuppress.set_defaults(func=cmd_unsuppress)
    listing = people.add_parser("requests", help="erasures, exports and unsuppresses, newest first")
    listing.add_argument("--status", choices=["received", "done", "failed"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(func=cmd_requests)
    job = commands.add_parser("jobs", help="show a background job")
    job.add_argument("job_id")
    job.set_defaults(func=cmd_job)

    rules = commands.add_parser("rules", help="rule-set versions").add_subparsers(
        dest="rules_command", required=True
    )
    validate = rules.add_parser("validate", help="check a rule-set file, offline")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)
    publish = rules.add_parser("publish", help="publish a file as a new version")
    publish.add_argument("file")
    publish.add_argument("--comment")
    publish.set_defaults(func=cmd_publish)
    activate = rules.add_parser("activate", help="make a version live (or roll back)")
    activate.add_argument("version", type=int)
    activate.add_argument("--rescore", action="store_true", help="re-score every lead")
    activate.set_defaults(func=cmd_activate)
    diff = rules.add_parser("diff", help="what changed between two versions")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    diff.add_argument(
        "--text", action="store_true", help="the two texts as their authors wrote them, unified"
    )
    diff.set_defaults(func=cmd_diff)
    show = rules.add_parser("show", help="a version's text as its author published it")
    show.add_argument("version", type=int)
    show.set_defaults(func=cmd_show)
    impact = rules.add_parser("impact", help="replay recent history under a version")
    impact.add_argument("version", type=int)
    impact.add_argument("--days", type=float, default=30)
    impact.add_argument("--json", action="store_true", help="print the whole report as JSON")
    impact.set_defaults(func=cmd_impact)
    listing = rules.add_parser("list", help="every published version, newest first")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(func=cmd_list)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    func = getattr(args, "func", cmd_run)
    try:
        func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
