"""Output records (docs/reference/topics.md) and sales feedback (in)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.rule_set import Stage


def _storable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL character, which cannot be stored")
    return text


# Text a request or a record asks leadscore to keep: PostgreSQL cannot store NUL.
StorableText = Annotated[str, AfterValidator(_storable)]

# Admin request bodies take JSON's types as they are: "10" is not a number and true is not 1
# (lax parsing once let `"value": true` add a point). Dates stay ISO 8601 strings: a body's
# datetime fields say `strict=False`.
STRICT_BODY = ConfigDict(extra="forbid", strict=True)

TransitionReason = Literal[
    "threshold",
    "trigger",
    "disqualified",
    "sales_feedback",
    "sla_expired",
    "rescore",
    "merge",
    "manual",
    "adjustment",
]
FeedbackOutcome = Literal[
    "accepted",
    "qualified",
    "rejected",
    "converted",
    "won",
    "lost",
    "disqualified",
]


# Why a message went to the DLQ (header `error`). Events: the first thirteen; feedback:
# invalid_json, schema, unknown_lead, illegal_transition.
DeadLetterCode = Literal[
    "invalid_json",
    "not_object",
    "unknown_type",
    "missing_message_id",
    "missing_identity",
    "invalid_timestamp",
    "future_timestamp",
    "schema",
    "too_large",
    "too_deep",
    "too_complex",
    "invalid_text",
    "processing_error",
    "unknown_lead",
    "illegal_transition",
]


class DeadLetterHeaders(BaseModel):
    """The headers of a record on `lead-events-dlq` (its value is the refused message's
    original bytes, cut to the record limit when longer)."""

    model_config = ConfigDict(extra="forbid")

    error: DeadLetterCode
    error_detail: str = Field(description="a sentence for humans, ASCII")
    source_topic: str
    source_partition: str = Field(pattern=r"^[0-9]+$")
    source_offset: str = Field(pattern=r"^[0-9]+$")
    truncated_from_bytes: str | None = Field(
        default=None, pattern=r"^[0-9]+$", description="present when the value was cut"
    )


class Score(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total: float
    fit: float
    engagement: float


class ScoreEntry(BaseModel):
    """One of a lead's scores (docs/concepts/scores.md). A learned score (a model in the
    rule set, docs/guides/learned-score.md) is the probability of its outcome in points
    (0-100): `fit` is the score of a lead at every feature's mean plus what its fit traits
    add, `engagement` what the rest adds, and `label` its grade (A-D) by the model's
    bands."""

    model_config = ConfigDict(extra="forbid")

    total: float
    fit: float
    engagement: float
    label: str | None = Field(
        description="the grade (A-D, from fit) and level (1-3, from engagement), e.g. A1; "
        "a learned score's grade A-D by its bands; null when the score has no grade bands"
    )


SCORES_DESCRIPTION = (
    "every score of the lead by name: `default` (the same as `score`) and the rule set's named "
    "ones, learned scores among them"
)
QUALIFIED_BY_DESCRIPTION = (
    "the scores that earned this stage (over their threshold, or a trigger counting for "
    "them); empty for moves no score made"
)
LABEL_DESCRIPTION = (
    "the lead's grade label: the default score's, else the first named score's that has grade "
    "bands; null when no score has them"
)


JOURNEY_PHASE_DESCRIPTION = (
    "the lead's buyer-journey phase once the event was placed (the phase at the handoff for "
    "a promotion); null when the rule set has no journey or the lead is in none yet"
)


class ErasureRecord(BaseModel):
    """A value on `lead-erasures`: a person's data was erased on request; systems that
    copied this lead's records (a CRM, a warehouse) should erase it too."""

    model_config = ConfigDict(extra="forbid")

    erasure_id: str = Field(description="`<request id>:<lead id>`: the same on every copy")
    lead_id: str = Field(description="the lead erased, as every other record named it")
    request_id: str = Field(description="the erasure request (GET /v1/people/requests/{id})")
    suppressed: bool = Field(
        description="whether later events for the person are dropped (until unsuppressed)"
    )
    erased_at: str = Field(description="when the erasure was committed, ISO 8601 UTC")


class TransitionRecord(BaseModel):
    """A value on `lead-status-transitions`."""

    model_config = ConfigDict(extra="forbid")

    transition_id: str
    lead_id: str
    account_id: str | None
    from_stage: Stage
    to_stage: Stage
    reason: TransitionReason
    reason_detail: str | None = Field(
        description="the words behind the move: a sales rejection's reason, an admin's reason "
        "for a manual move"
    )
    rule_id: str | None
    score: Score
    ruleset_version: int
    caused_by: str | None
    occurred_at: datetime
    emitted_at: datetime
    committee_role: str | None = Field(
        description="the person's role in their account's buying committee (null without one, "
        "or when the rule set does not score accounts)"
    )
    account_score: float | None = Field(
        description="the account's total score at the moment (null without an account, or "
        "when the rule set does not score accounts)"
    )
    scores: dict[str, ScoreEntry] = Field(description=SCORES_DESCRIPTION)
    qualified_by: list[str] = Field(description=QUALIFIED_BY_DESCRIPTION)
    label: str | None = Field(description=LABEL_DESCRIPTION)
    journey_phase: str | None = Field(
        default=None,
        description=JOURNEY_PHASE_DESCRIPTION,
    )


class Signal(BaseModel):
    """One rule's share of a score. The contributions of a score's signals add up to its
    total to the cent: fit signals to `fit`, engagement signals to `engagement`."""

    model_config = ConfigDict(extra="forbid")

    rule_id: str
    description: str
    category: Literal["fit", "engagement"]
    points: float | None = Field(
        description="the rule's points per hit; null when the rule is not in the rule set "
        "version explaining the score"
    )
    hits: int = Field(description="hits counted (1 for a fit rule that holds)")
    ignored: int = Field(description="hits a limit did not count")
    contribution: float = Field(
        description="what the rule adds to the score at the moment it is shown: points for a "
        "fit rule, the counted hits' points decayed by their age for an engagement rule"
    )
    last_seen: datetime | None = Field(description="the rule's last hit (engagement rules)")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None
    title: str | None
    company: str | None


class NotificationRecord(BaseModel):
    """A value on `sales-notifications`."""

    model_config = ConfigDict(extra="forbid")

    notification_id: str
    type: Literal["promotion", "sla_breach", "qualified"] = Field(
        description="`qualified`: a further score reached, by its own threshold, a stage the "
        "lead is already in (it moved there by another score): that score's sales hear of it"
    )
    lead_id: str
    stage: Stage
    priority: Literal["hot", "warm"]
    score: Score
    signals: list[Signal] = Field(
        description="every rule behind the score, largest contribution first"
    )
    profile: Profile
    owner: str
    respond_by: datetime | None
    ruleset_version: int
    occurred_at: datetime
    committee_role: str | None
    account_score: float | None
    scores: dict[str, ScoreEntry] = Field(description=SCORES_DESCRIPTION)
    qualified_by: list[str] = Field(description=QUALIFIED_BY_DESCRIPTION)
    label: str | None = Field(description=LABEL_DESCRIPTION)
    signals_by_score: dict[str, list[Signal]] = Field(
        description="the named scores' signals, each list adding up to its score as `signals` "
        "does to the default one (empty with one score). A learned score's list is "
        "`model:base` (a lead at every feature's mean), its eight largest features' parts "
        "(`rule_id` the feature, e.g. `rule:webinar`) and `model:other`, the rest summed"
    )
    journey_phase: str | None = Field(
        default=None,
        description=JOURNEY_PHASE_DESCRIPTION,
    )


ACCOUNT_SCORES_DESCRIPTION = (
    "every score of the account by name: `default` (the same as `score`) and the rule set's "
    "named ones (fit from the account fit rules counting for it, engagement rolled up from the "
    "members' engagement in it, the committee's coverage)"
)
AccountStage = Literal["target", "engaged", "mqa", "opportunity", "customer", "disqualified"]
AccountTransitionReason = Literal[
    "engaged", "qualified", "sales_feedback", "rescore", "manual", "adjustment"
]


class AccountScore(BaseModel):
    """An account's score: account fit + the roll-up of its members' engagement + the
    points of the committee roles covered."""

    model_config = ConfigDict(extra="forbid")

    total: float
    fit: float
    engagement: float
    coverage: float


class MemberShare(BaseModel):
    """A member counted in the account's engagement; the shares add up to it, to the cent."""

    model_config = ConfigDict(extra="forbid")

    lead_id: str
    role: str | None
    contribution: float


class AccountTransitionRecord(BaseModel):
    """A value on `account-status-transitions`."""

    model_config = ConfigDict(extra="forbid")

    transition_id: str = Field(description="<account_id>:<n>, n counting the account's moves")
    account_id: str
    from_stage: AccountStage
    to_stage: AccountStage
    reason: AccountTransitionReason
    reason_detail: str | None
    score: AccountScore
    roles_covered: list[str] = Field(description="committee roles covered, in rule-set order")
    roles_missing: list[str] = Field(description="committee roles not covered")
    top_members: list[MemberShare] = Field(
        description="the members counted in the engagement, largest share first"
    )
    ruleset_version: int
    caused_by: str | None
    occurred_at: datetime
    emitted_at: datetime
    scores: dict[str, AccountScore] = Field(description=ACCOUNT_SCORES_DESCRIPTION)


class AccountProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None
    domain: str | None
    industry: str | None


class AccountQualifiedRecord(BaseModel):
    """An `account_qualified` value on `sales-notifications`: an account reached `mqa`."""

    model_config = ConfigDict(extra="forbid")

    notification_id: str
    type: Literal["account_qualified"]
    account_id: str
    stage: Literal["mqa"]
    priority: Literal["hot"]
    score: AccountScore
    roles_covered: list[str]
    roles_missing: list[str]
    top_members: list[MemberShare]
    profile: AccountProfile
    owner: str
    ruleset_version: int
    occurred_at: datetime
    scores: dict[str, AccountScore] = Field(description=ACCOUNT_SCORES_DESCRIPTION)


class FeedbackBody(BaseModel):
    """Sales feedback as POSTed to /v1/leads/{lead_id}/feedback (`at` defaults to now)."""

    model_config = ConfigDict(extra="forbid")

    feedback_id: StorableText = Field(min_length=1, max_length=200)
    outcome: FeedbackOutcome
    reason: StorableText | None = Field(default=None, max_length=500)
    by: StorableText | None = Field(default=None, max_length=200)
    at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _reason(self) -> FeedbackBody:
        if self.outcome == "rejected" and not (self.reason or "").strip():
            raise ValueError("'rejected' needs a reason (why the lead goes back to marketing)")
        return self


class FeedbackRecord(FeedbackBody):
    """A value on `sales-feedback`."""

    lead_id: str = Field(min_length=1, max_length=512)
    at: AwareDatetime


class JourneyMove(BaseModel):
    """A lead or an account moved between buyer-journey phases (docs/concepts/journey.md)."""

    model_config = ConfigDict(extra="forbid")

    subject: Literal["lead", "account"]
    subject_id: str
    seq: int = Field(description="the move's number in the subject's own sequence, from 1")
    from_phase: str | None = Field(description="null for the first phase entered")
    to_phase: str | None = Field(
        description="null: an account no longer has enough members placed in any phase"
    )
    reason: Literal["evidence", "quiet", "merge", "members"] = Field(
        description="evidence: an event one of the phase's rules matched (`rule_id`, "
        "`caused_by`); quiet: no evidence of the phase for its quiet time (dated when it ran "
        "out); merge: an anonymous visitor's journey joined the identified lead's; members: "
        "the account's members reached the phase"
    )
    rule_id: str | None
    caused_by: str | None = Field(description="the messageId of the event behind the move")
    content: str | None = Field(description="the event's page path or track event name")
    channel: str | None = Field(description="the channel the event came from")
    seen: list[str] = Field(
        description="the content seen in the phase left, the latest last (at most 20 items)"
    )
    occurred_at: datetime
    ruleset_version: int


class Touch(BaseModel):
    channel: str
    at: datetime


class JourneyPosition(BaseModel):
    """Where a lead or an account stands in the buyer journey."""

    phase: str | None = Field(description="null until an event is evidence of a phase")
    since: datetime | None
    last_evidence_at: datetime | None = Field(
        description="the latest event that was evidence of the phase: its quiet time counts "
        "from here"
    )
    first_touch: Touch | None
    last_touch: Touch | None = Field(
        description="the latest event that came from a channel (a direct visit after a "
        "campaign does not replace the campaign)"
    )
    entered_via: dict[str, str] = Field(
        description="per phase entered, the channel of the event that moved the lead there"
    )
    seen: list[str] = Field(description="the content seen in the phase, the latest last")
