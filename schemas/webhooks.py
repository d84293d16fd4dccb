"""Outbound endpoints (docs/guides/webhooks.md): signed webhooks and CRM writers,
their mappings, and the deliveries' log, as the HTTP API takes and gives them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from schemas.records import STRICT_BODY, AccountStage
from schemas.rule_set import Stage

EndpointKind = Literal["webhook", "hubspot", "salesforce"]
RecordKind = Literal[
    "transitions", "notifications", "account_transitions", "account_notifications", "erasures"
]
NotificationType = Literal["promotion", "sla_breach", "qualified", "account_qualified"]
MappableField = Literal[
    "score",
    "fit",
    "engagement",
    "stage",
    "label",
    "qualified_by",
    "reason",
    "top_signals",
    "account_score",
    "roles_missing",
    "lead_id",
    "account_id",
    "ruleset_version",
    "occurred_at",
]
IdentityField = Literal["lead_id", "account_id", "email", "domain"]
DeliveryState = Literal["pending", "delivered", "failed", "skipped"]
# A CRM property or field name: HubSpot's internal names, Salesforce's API names (custom
# ones end in __c).
CrmName = str
_CRM_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,79}$"
HUBSPOT_OBJECTS = ("contacts", "companies")
SALESFORCE_OBJECTS = ("Lead", "Contact", "Account")
MAX_MAPPED = 50


class CrmMapping(BaseModel):
    """Which CRM object a record writes, what identifies it there, and which leadscore
    field goes to which CRM property."""

    model_config = STRICT_BODY

    object: str = Field(
        pattern=_CRM_NAME,
        description="HubSpot: contacts or companies; Salesforce: Lead, Contact or Account",
    )
    id_property: str = Field(
        pattern=_CRM_NAME,
        description="the unique property (HubSpot) or external id field (Salesforce) to upsert by",
    )
    id_from: IdentityField = Field(
        default="lead_id",
        description="the record's value that fills id_property (email and domain: on "
        "notifications, from the profile)",
    )
    properties: dict[str, MappableField] = Field(
        min_length=1,
        max_length=MAX_MAPPED,
        description="{CRM property name: leadscore field}",
    )

    @model_validator(mode="after")
    def _names(self) -> Self:
        import re

        bad = [name for name in self.properties if not re.fullmatch(_CRM_NAME, name)]
        if bad:
            raise ValueError(f"properties: not a CRM property name: {bad[0][:80]!r}")
        if self.id_property in self.properties:
            raise ValueError("properties: the id_property is written from id_from, not mapped")
        return self


class EndpointFields(BaseModel):
    model_config = STRICT_BODY

    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    url: str = Field(
        min_length=8,
        max_length=2000,
        description="where deliveries go; https, and no private address, unless the "
        "service's settings allow them (docs/guides/security.md)",
    )
    records: list[RecordKind] = Field(
        default=["transitions", "notifications"], min_length=1, max_length=4
    )
    types: list[NotificationType] = Field(
        default_factory=list, max_length=4, description="notification types; empty: every type"
    )
    stages: list[Stage | AccountStage] = Field(
        default_factory=list,
        max_length=16,
        description="transitions to these stages only; empty: every stage",
    )
    paused: bool = Field(default=False, description="queue deliveries, send none until resumed")
    retry_hours: float = Field(
        default=24, gt=0, le=24 * 7, description="how long a delivery is retried"
    )
    rate_per_second: float = Field(
        default=10, gt=0, le=1000, description="requests per second at most, per instance"
    )


class EndpointSettings(EndpointFields):
    """Everything an endpoint is but its secret: what a create sets and what every change
    must leave valid (a PATCH is checked by merging it into the endpoint and validating the
    result with this model)."""

    kind: EndpointKind = "webhook"
    mapping: CrmMapping | None = None

    @model_validator(mode="after")
    def _kind_needs_mapping(self) -> Self:
        if self.kind == "webhook":
            if self.mapping is not None:
                raise ValueError("a webhook has no mapping (it is signed instead)")
            return self
        if self.mapping is None:
            raise ValueError(f"a {self.kind} writer needs a mapping")
        objects = HUBSPOT_OBJECTS if self.kind == "hubspot" else SALESFORCE_OBJECTS
        if self.mapping.object not in objects:
            raise ValueError(f"mapping.object: one of {', '.join(objects)} for {self.kind}")
        return self


class EndpointCreate(EndpointSettings):
    """A new endpoint. A webhook gets a signing secret (returned once); a CRM writer needs
    its token and a mapping."""

    token: str | None = Field(
        default=None,
        min_length=8,
        max_length=4000,
        description="HubSpot: a private app's access token; Salesforce: an OAuth bearer token",
    )

    @model_validator(mode="after")
    def _kind_needs_token(self) -> Self:
        if self.kind == "webhook" and self.token is not None:
            raise ValueError("a webhook has no token or mapping (it is signed instead)")
        if self.kind != "webhook" and self.token is None:
            raise ValueError(f"a {self.kind} writer needs a token and a mapping")
        return self


class EndpointUpdate(BaseModel):
    """Changes to an endpoint; what is left out stays."""

    model_config = STRICT_BODY

    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    records: list[RecordKind] | None = Field(default=None, min_length=1, max_length=4)
    types: list[NotificationType] | None = Field(default=None, max_length=4)
    stages: list[Stage | AccountStage] | None = Field(default=None, max_length=16)
    paused: bool | None = None
    retry_hours: float | None = Field(default=None, gt=0, le=24 * 7)
    rate_per_second: float | None = Field(default=None, gt=0, le=1000)
    mapping: CrmMapping | None = None


class StoredMapping(BaseModel):
    """A CRM writer's mapping as stored and shown: read back as it is (an endpoint stored by
    an older release may hold one today's checks refuse; its page must still open)."""

    object: str
    id_property: str
    id_from: str = "lead_id"
    properties: dict[str, str]


class Endpoint(BaseModel):
    id: str
    name: str
    kind: EndpointKind
    url: str
    records: list[str]
    types: list[str]
    stages: list[str]
    paused: bool
    retry_hours: float
    rate_per_second: float
    mapping: StoredMapping | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    pending: int = Field(description="deliveries waiting")
    failed: int = Field(description="deliveries set aside after their retry window")


class EndpointCreated(Endpoint):
    secret: str | None = Field(
        description="the signing secret (webhooks): shown this once, stored encrypted"
    )


class EndpointList(BaseModel):
    items: list[Endpoint]


class Delivery(BaseModel):
    id: int
    record_id: str = Field(description="the record's id, sent as webhook-id on every attempt")
    kind: RecordKind
    subject: str = Field(description="the lead or account the record is about")
    seq: int
    state: DeliveryState
    attempts: int
    queued_at: datetime
    due_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None = Field(description="the last answer's HTTP status")
    last_latency_ms: float | None
    reason: str | None = Field(description="why the last attempt failed, or why it was skipped")
    response: str | None = Field(description="the last answer's body, truncated")


class DeliveryList(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class Redeliver(BaseModel):
    """Deliver again: one delivery (`delivery_id`) or every failed one since a time."""

    model_config = STRICT_BODY

    delivery_id: int | None = Field(default=None, ge=1)
    failed_since: AwareDatetime | None = Field(default=None, strict=False)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.delivery_id is None) == (self.failed_since is None):
            raise ValueError("give either delivery_id or failed_since")
        return self


class EndpointDeleted(BaseModel):
    deleted: str = Field(description="the endpoint's id")


class Redelivered(BaseModel):
    queued: int


class WebhookHeaders(BaseModel):
    """The Standard Webhooks headers of every delivery."""

    webhook_id: str = Field(
        alias="webhook-id", description="the record's id: the same on every retry"
    )
    webhook_timestamp: str = Field(
        alias="webhook-timestamp", description="Unix seconds of this attempt"
    )
    webhook_signature: str = Field(
        alias="webhook-signature",
        description="v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>' keyed by the secret>",
    )


class WebhookMessage(BaseModel):
    """A delivery's body: one record as on its topic, typed and stamped."""

    type: Literal[
        "lead.transition",
        "lead.notification",
        "account.transition",
        "account.notification",
        "lead.erased",
    ]
    timestamp: datetime = Field(description="when the record was queued (the same on retries)")
    data: dict[str, object] = Field(
        description="the record: TransitionRecord, NotificationRecord, "
        "AccountTransitionRecord, AccountQualifiedRecord or ErasureRecord"
    )
