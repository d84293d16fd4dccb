"""The AsyncAPI document in docs/ is the one the models generate, names every topic, and
every record the starter rules produce for a generated workload (and for hostile input)
validates against its JSON Schemas."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.workload import generate
from schemas.records import (
    AccountProfile,
    AccountQualifiedRecord,
    AccountScore,
    AccountTransitionRecord,
    MemberShare,
    NotificationRecord,
    Profile,
    Score,
    Signal,
    TransitionRecord,
)
from scoring_service.engine import Engine
from scoring_service.intake import Event, Rejection, parse_event
from scoring_service.rule_set_files import starter_ruleset
from scoring_service.simulation import replay_documents
from services.adapters.asyncapi import build_document, render
from services.outputs import all_topics
from services.pipeline.batches import DeadLetter
from services.settings import Settings
from stage_router import records
from tests.helpers.hostile import hostile_message

DOCUMENT = Path(__file__).parents[2] / "docs" / "asyncapi.yaml"


def published() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text())


# Read and compiled once for the property test: parsing the YAML document for each of its 300
# examples (and a validator per record) was most of its 47 s.
_PUBLISHED = published()
_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def published_validator(schema: str) -> jsonschema.Draft202012Validator:
    if schema not in _VALIDATORS:
        _VALIDATORS[schema] = validator(_PUBLISHED, schema)
    return _VALIDATORS[schema]


def validator(document: dict[str, Any], schema: str) -> jsonschema.Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_document_parses_and_every_reference_resolves():
    document = published()
    assert document["asyncapi"] == "3.0.0"
    for ref in refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")


def test_the_document_names_every_topic_the_settings_know():
    channels = published()["channels"]
    addresses = {c["address"] for name, c in channels.items() if name != "webhooks"}
    defaults = Settings()
    assert addresses == set(all_topics(defaults))
    # Webhooks go to each endpoint's own URL, a parameter of the address.
    assert channels["webhooks"]["address"] == "{endpointUrl}"


def test_the_document_is_what_the_models_generate():
    """After changing a model: python -m services.adapters.asyncapi > docs/asyncapi.yaml"""
    assert published() == build_document()
    assert DOCUMENT.read_text() == render(build_document())


def test_the_record_types_name_the_published_fields():
    pairs = [
        (records.TransitionDoc, TransitionRecord),
        (records.NotificationDoc, NotificationRecord),
        (records.ScoreDoc, Score),
        (records.SignalDoc, Signal),
        (records.ProfileDoc, Profile),
        (records.AccountTransitionDoc, AccountTransitionRecord),
        (records.AccountNotificationDoc, AccountQualifiedRecord),
        (records.AccountScoreDoc, AccountScore),
        (records.MemberDoc, MemberShare),
        (records.AccountProfileDoc, AccountProfile),
    ]
    for typed, model in pairs:
        assert set(typing.get_type_hints(typed)) == set(model.model_fields), typed.__name__


_STARTER = starter_ruleset()  # compiled once: the property test replays 300 examples


def _records_of(docs: list[Any]) -> tuple[list[Any], list[Any]]:
    """The transitions and notifications the starter rules give, with a breach notice for
    every lead that was handed over (as the deadline watcher would send)."""
    engine = Engine(_STARTER)
    replay = replay_documents(engine, docs, now=time.time())
    notifications = list(replay.notifications)
    for state in replay.ws.leads.values():
        notifications.append(
            records.breach_record(
                handoff_transition_id=f"{state.lead_id}:{state.seq}",
                lead_id=state.lead_id,
                stage=state.stage,
                score=records.score_doc(state.fit, state.engagement),
                signals=engine.explain(state)[1],
                profile_doc=records.profile(state.traits, None),
                owner="sdr@example.com",
                respond_by=state.as_of or 0.0,
                ruleset_version=engine.rules.version,
            )
        )
    return replay.transitions, notifications


def _valid_json(validator_: jsonschema.Draft202012Validator, record: Any) -> None:
    # Validate what goes on the wire, not the Python value.
    validator_.validate(orjson.loads(orjson.dumps(record)))


def test_every_record_of_a_generated_workload_validates():
    document = published()
    docs = list(generate(events=20_000, leads=2_000, seed=4, anonymous_share=0.3))
    transitions, notifications = _records_of(docs)
    assert len(transitions) > 500 and len(notifications) > 2_000
    check = validator(document, "TransitionRecord")
    for record in transitions:
        _valid_json(check, record)
    check = validator(document, "NotificationRecord")
    for record in notifications:
        _valid_json(check, record)
    replay = replay_documents(Engine(starter_ruleset()), docs, now=time.time())
    stages = {t["to_stage"] for t in replay.account_transitions}
    assert stages >= {"engaged", "mqa"} and replay.account_notifications
    check = validator(document, "AccountTransitionRecord")
    for account_record in replay.account_transitions:
        _valid_json(check, account_record)
    check = validator(document, "AccountQualifiedRecord")
    for notice in replay.account_notifications:
        _valid_json(check, notice)


def _dead_letter_headers(raw: bytes) -> dict[str, str] | None:
    event = parse_event(raw, now=time.time(), fallback_ts=time.time())
    if isinstance(event, Event):
        return None
    assert isinstance(event, Rejection)
    record = ConsumerRecord("lead-events", 3, 17, 0, 0, b"k", raw, None, 1, len(raw), [])
    row = DeadLetter(record, event).to_outbox(topic="lead-events-dlq", max_record_bytes=900_000)
    return dict(row.headers or [])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(hostile_message(), min_size=1, max_size=20))
def test_records_and_dead_letters_of_hostile_input_validate(raws):
    transitions, notifications = _records_of(raws)
    for record in transitions:
        _valid_json(published_validator("TransitionRecord"), record)
    for record in notifications:
        _valid_json(published_validator("NotificationRecord"), record)
    headers = published_validator("DeadLetterHeaders")
    for raw in raws:
        found = _dead_letter_headers(raw)
        if found is not None:
            headers.validate(found)


async def test_the_openapi_document_in_docs_is_what_the_app_serves():
    """After changing a route: python -m services.runtime.openapi > docs/openapi.json"""
    from services.runtime.openapi import build_openapi
    from services.runtime.openapi import render as render_openapi

    served = await build_openapi()
    path = DOCUMENT.parent / "openapi.json"
    assert orjson.loads(path.read_text()) == served
    assert path.read_text() == render_openapi(served)
    assert "/v1/leads/{lead_id}/feedback" in served["paths"]
