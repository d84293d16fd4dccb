"""What an outbound delivery says and when it is tried again: pure, no I/O.

A record (a lead's or an account's transition, a notification) goes to a webhook endpoint as
a Standard Webhooks message (https://www.standardwebhooks.com): a JSON envelope
`{"type", "timestamp", "data"}` signed with HMAC-SHA256 over `id.timestamp.body`, the id the
record's own (the same on every retry, so a receiver drops a copy). To a CRM it goes as the
properties an admin mapped, in the batch shape of the vendor's upsert API: HubSpot's
`inputs`/`idProperty`, Salesforce's sObject Collections `records` with an external id. An
erasure goes to a CRM as a delete of the record it holds under the lead's id.

Failed attempts are retried with exponential back-off and jitter until the endpoint's retry
window has passed; a `Retry-After` answer (429, 503) is honoured within the back-off cap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, get_args
from urllib.parse import quote

import orjson

from schemas.webhooks import IdentityField, MappableField

# The kinds of record an endpoint can ask for, by the outputs' effect names
# (services/outputs.py), and the type each has in the Standard Webhooks envelope.
RECORD_TYPES = {
    "transitions": "lead.transition",
    "notifications": "lead.notification",
    "account_transitions": "account.transition",
    "account_notifications": "account.notification",
    "erasures": "lead.erased",
}
SECRET_PREFIX = "whsec_"
# Vendors' documented batch limits: HubSpot's batch upsert takes 100 inputs, Salesforce's
# sObject Collections 200 records.
BATCH_LIMITS = {"webhook": 1, "hubspot": 100, "salesforce": 200}
SALESFORCE_API_VERSION = "v62.0"
# What a mapping may write, and where a CRM record's identity comes from: the contract's
# lists (schemas/webhooks.py).
MAPPABLE_FIELDS: tuple[str, ...] = get_args(MappableField)
IDENTITY_FIELDS: tuple[str, ...] = get_args(IdentityField)
# Top signals as text: at most this many, and this long.
TOP_SIGNALS = 3
TEXT_LIMIT = 1000


def secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret, as Standard Webhooks libraries read it."""
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def envelope(kind: str, record: Mapping[str, Any], queued_at: datetime) -> dict[str, Any]:
    """The message body: the record under `data`, typed, stamped when it was queued (so a
    retry sends the same bytes)."""
    return {
        "type": RECORD_TYPES[kind],
        "timestamp": queued_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": record,
    }


def retry_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before attempt `attempt + 1`: base * 2^(attempt-1), capped, scaled by a
    jitter in [0, 1) to between half and all of it (retries of many records spread out)."""
    exponential = base * 2.0 ** min(max(attempt - 1, 0), 40)
    return min(cap, exponential) * (0.5 + jitter / 2)


def retry_after(value: str | None, now: datetime) -> float | None:
    """A `Retry-After` header in seconds (delay-seconds or an HTTP date); None if absent or
    unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text[:9]))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def record_seq(subject: str, record_id: str) -> int:
    """The lead's (or account's) move number a record was made at: ids are
    `<subject>:<seq>[:...]` (stage_router/records.py)."""
    rest = record_id[len(subject) + 1 :] if record_id.startswith(subject + ":") else ""
    head = rest.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def field_value(record: Mapping[str, Any], name: str) -> Any:
    """One mappable field of a record; None where the record has no such thing."""
    score = record.get("score") or {}
    if name in ("score", "fit", "engagement"):
        value = score.get("total" if name == "score" else name)
        return round(value, 2) if isinstance(value, int | float) else None
    if name == "stage":
        return record.get("to_stage") or record.get("stage")
    if name == "qualified_by":
        return ";".join(record.get("qualified_by") or []) or None
    if name == "reason":
        return record.get("reason") or record.get("type")
    if name == "top_signals":
        signals = sorted(
            record.get("signals") or [], key=lambda s: -abs(s.get("contribution") or 0)
        )
        text = "; ".join(
            f"{s.get('description') or s.get('rule_id')} ({s.get('contribution', 0):+g})"
            for s in signals[:TOP_SIGNALS]
        )
        return text[:TEXT_LIMIT] or None
    if name == "account_score":
        value = record.get("account_score")
        if value is None and record.get("account_id") and not record.get("lead_id"):
            value = score.get("total")
        return round(value, 2) if isinstance(value, int | float) else None
    if name == "roles_missing":
        return ";".join(record.get("roles_missing") or []) or None
    return record.get(name)


def identity(record: Mapping[str, Any], source: str) -> str | None:
    """The value that identifies the CRM record: an id field, or the profile's email or
    domain (on notifications)."""
    if source in ("email", "domain"):
        value = (record.get("profile") or {}).get(source)
    else:
        value = record.get(source)
    return str(value) if value else None


def mapped_properties(record: Mapping[str, Any], properties: Mapping[str, str]) -> dict[str, Any]:
    """The CRM properties of one record: {crm name: value} for the mapped fields it has."""
    values = {crm: field_value(record, field) for crm, field in properties.items()}
    return {crm: value for crm, value in values.items() if value is not None}


def hubspot_batch(
    items: Sequence[tuple[str, Mapping[str, Any]]], *, id_property: str
) -> dict[str, Any]:
    """HubSpot's batch upsert body (POST /crm/v3/objects/<object>/batch/upsert): one input
    per (identity, properties); property values as strings, as HubSpot stores them. Each
    identity at most once (the dispatcher sees to it)."""
    return {
        "inputs": [
            {
                "idProperty": id_property,
                "id": key,
                "properties": {k: _as_text(v) for k, v in props.items()},
            }
            for key, props in items
        ]
    }


def salesforce_batch(
    items: Sequence[tuple[str, Mapping[str, Any]]], *, sobject: str, external_id: str
) -> dict[str, Any]:
    """Salesforce's sObject Collections upsert body (PATCH /services/data/vXX.X/composite/
    sobjects/<SObject>/<ExternalIdField>): each record with `attributes.type` and the
    external id field; not all-or-none, so one bad record does not hold back the rest.
    Salesforce answers per record in this order."""
    return {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": sobject}, external_id: key, **props} for key, props in items
        ],
    }


def crm_delete(
    kind: str, base: str, key: str, *, sobject: str, id_property: str
) -> tuple[str, str, bytes | None]:
    """Method, URL and body that delete one record a CRM holds by our id (an erasure):
    HubSpot's GDPR delete (POST /crm/v3/objects/<object>/gdpr-delete with `objectId` and
    `idProperty`: the record and its activity go), Salesforce's delete by external id
    (DELETE /services/data/vXX.X/sobjects/<SObject>/<ExternalIdField>/<value>)."""
    if kind == "hubspot":
        body = orjson.dumps({"objectId": key, "idProperty": id_property})
        return "POST", f"{base}/crm/v3/objects/{sobject}/gdpr-delete", body
    path = (
        f"/services/data/{SALESFORCE_API_VERSION}/sobjects/{quote(sobject, safe='')}/"
        f"{quote(id_property, safe='')}/{quote(key, safe='')}"
    )
    return "DELETE", base + path, None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
