"""Suppression keys: the same person always gives the same keys, under one secret only, and
a key never holds the clear value; CRM deletes have the vendors' documented shapes."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from scoring_service.suppression import Suppression
from stage_router.deliveries import crm_delete
from tests.helpers.factories import alias, identify, page, parsed

SECRET = b"a long random secret for the tests"


def test_a_key_is_the_keyed_hash_of_the_kind_and_value() -> None:
    keys = Suppression(SECRET)
    assert keys.id_key("u-1") == hmac.new(SECRET, b"id:u-1", hashlib.sha256).digest()
    assert keys.email_key(" Dana@Trucking-Co.com ") == keys.email_key("dana@trucking-co.com")
    assert keys.id_key("U-1") != keys.id_key("u-1")  # ids are case-sensitive, as in events
    assert keys.id_key("dana@trucking-co.com") != keys.email_key("dana@trucking-co.com")
    assert Suppression(b"another secret").id_key("u-1") != keys.id_key("u-1")
    assert b"u-1" not in keys.id_key("u-1")


def test_an_event_names_its_person_by_each_id_and_its_address() -> None:
    keys = Suppression(SECRET)
    assert keys.event_keys(parsed(page("/pricing", user="u-1", anon="a-1"))) == [
        keys.id_key("u-1"),
        keys.id_key("a-1"),
    ]
    assert keys.id_key("a-9") in keys.event_keys(parsed(alias("a-9", "u-1")))
    told = parsed(identify({"email": "Dana@X.example", "name": "Dana"}, anon="a-2"))
    assert keys.event_keys(told) == [keys.id_key("a-2"), keys.email_key("dana@x.example")]
    odd = parsed(identify({"email": ["not", "text"]}, anon="a-3"))
    assert keys.event_keys(odd) == [keys.id_key("a-3")]


def test_a_person_is_known_by_every_id_and_every_address_in_their_traits() -> None:
    keys = Suppression(SECRET)
    held = keys.person_keys(["u-1", "a-1"], [{"email": "D@X.example"}, {"email": "  "}, {}])
    assert held == {keys.id_key("u-1"), keys.id_key("a-1"), keys.email_key("d@x.example")}


def test_crm_deletes_have_the_vendors_documented_shapes() -> None:
    method, url, body = crm_delete(
        "hubspot", "https://api.hubapi.com", "u-1", sobject="contacts", id_property="leadscore_id"
    )
    assert (method, url) == ("POST", "https://api.hubapi.com/crm/v3/objects/contacts/gdpr-delete")
    assert body is not None
    assert orjson.loads(body) == {"objectId": "u-1", "idProperty": "leadscore_id"}
    method, url, body = crm_delete(
        "salesforce", "https://x.my.salesforce.com", "u 1/2", sobject="Lead", id_property="Ext__c"
    )
    assert (method, body) == ("DELETE", None)
    # The value is one path segment however it is spelled.
    assert url == "https://x.my.salesforce.com/services/data/v62.0/sobjects/Lead/Ext__c/u%201%2F2"
