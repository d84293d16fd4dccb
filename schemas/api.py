"""HTTP API bodies (docs/reference/http-api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.records import (
    STRICT_BODY,
    AccountScore,
    AccountStage,
    AccountTransitionRecord,
    JourneyMove,
    JourneyPosition,
    MemberShare,
    Score,
    ScoreEntry,
    Signal,
    StorableText,
    TransitionRecord,
)
from schemas.rule_set import Stage


class ErrorBody(BaseModel):
    """Every error: a short machine code and a human explanation."""

    error: str
    detail: Any = None


class Problem(BaseModel):
    loc: str = Field(description="where in the document, e.g. rules[3].when.path")
    msg: str


class RuleSetProblems(BaseModel):
    error: Literal["invalid_ruleset", "invalid_request"]
    detail: list[Problem]


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = {}
    # Why a check failed, or which loop is restarting or has given up.
    problems: dict[str, str] = {}


class LeadPublic(BaseModel):
    """GET /v1/leads/{lead_id}: where a lead stands now and why."""

    lead_id: str
    stage: Stage
    stage_entered_at: datetime | None
    account_id: str | None
    score: Score
    score_as_of: datetime
    last_event_at: datetime | None
    signals: list[Signal] = Field(
        description="every rule behind the score, largest contribution first; the "
        "contributions add up to the total to the cent"
    )
    ruleset_version: int
    held: str | None = Field(
        default=None,
        description="why the lead does not move further although its score or a trigger "
        "says it should: an exclusion ('excluded: <id>') or a requirement ('sal requires "
        "title')",
    )
    committee_role: str | None = Field(
        default=None, description="the person's role in their account's buying committee"
    )
    account_score: float | None = Field(
        default=None, description="the account's total score (as of its latest member event)"
    )
    scores: dict[str, ScoreEntry] = Field(
        default_factory=dict,
        description="every score by name, as of now: `default` (the same as `score`) and the "
        "rule set's named ones",
    )
    label: str | None = Field(default=None, description="the lead's grade label, e.g. A1")
    signals_by_score: dict[str, list[Signal]] = Field(
        default_factory=dict,
        description="the named scores' signals (each adds up to its score, as `signals` does)",
    )
    qualified: dict[str, Stage] = Field(
        default_factory=dict,
        description="with several scores: the highest stage each score has qualified the lead for",
    )
    journey: JourneyPosition | None = Field(
        default=None,
        description="where the lead stands in the buyer journey (null without a journey in "
        "the rule set)",
    )


class LeadSummary(BaseModel):
    lead_id: str
    stage: Stage
    account_id: str | None
    score: Score = Field(description="as of the lead's latest event (not decayed to now)")
    scores: dict[str, float] = Field(
        default_factory=dict,
        description="each score's total by name, as of the lead's latest event (with several "
        "scores or grade bands; empty otherwise)",
    )
    label: str | None = Field(default=None, description="the lead's grade label, e.g. A1")
    journey_phase: str | None = Field(default=None, description="the buyer-journey phase")
    last_event_at: datetime | None
    updated_at: datetime


class LeadPage(BaseModel):
    items: list[LeadSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class Hit(BaseModel):
    rule_id: str
    points: float
    counted: bool


class ScoredEventPublic(BaseModel):
    message_id: str
    type: str
    occurred_at: datetime
    hits: list[Hit]
    points: float
    ruleset_version: int
    scored_at: datetime
    held: str | None = Field(
        default=None, description="why the lead was held after this event, if it was"
    )
    superseded: bool = Field(
        description="the event's points no longer count: the lead was recycled since"
    )
    contribution: float = Field(
        description="what the event's counted points add to the engagement score as of the "
        "lead's clock (decayed by their age; 0 when superseded)"
    )
    contribution_now: float = Field(
        default=0.0,
        description="what they add as of the reading, the time `GET /v1/leads/{id}` scores "
        "at: the lead page's 'adds ... now' (with the fit signals and the unlisted part these "
        "add up to `score_now.total`, to the cent)",
    )


class AdjustmentEntry(BaseModel):
    at: datetime
    by: str
    scores: list[str]
    operation: Literal["set", "add"]
    value: float
    reason: str
    transition_id: str | None


class ScoreHistory(BaseModel):
    engagement: float
    contributions: list[float]
    unlisted_contribution: float
    adjusted_contribution: float


class LeadHistory(BaseModel):
    """A lead's log. The events' contributions, `unlisted_contribution` and the fit signals
    add up to `score.total`, to the cent."""

    lead_id: str
    score: Score = Field(
        description="the score at the lead's last event (`score_as_of`), the time `contribution` "
        "explains"
    )
    score_as_of: datetime | None
    score_now: Score | None = Field(
        default=None,
        description="the score as of the reading, as `GET /v1/leads/{id}` gives it; "
        "`contribution_now` explains it",
    )
    signals: list[Signal]
    unlisted_contribution: float = Field(
        description="engagement from events not listed: older than the page or the history's "
        "retention"
    )
    events: list[ScoredEventPublic]
    transitions: list[TransitionRecord]
    adjusted_contribution: float = Field(
        default=0.0,
        description="what admins' adjustments of the default score add to it now (each one is "
        "in `adjustments`)",
    )
    adjustments: list[AdjustmentEntry] = Field(
        default_factory=list, description="adjustments of the lead's scores, oldest first"
    )
    by_score: dict[str, ScoreHistory] = Field(
        default_factory=dict,
        description="each named score's engagement shared the same way: `contributions[i]` is "
        "the share of `events[i]`; with the unlisted and adjusted parts they add up to it",
    )
    journey: list[JourneyMove] = Field(
        default_factory=list, description="the lead's buyer-journey moves, oldest first"
    )


class RuleSetSummary(BaseModel):
    version: int
    name: str
    published_by: str
    published_at: datetime
    comment: str | None
    active: bool


class RuleSetPublic(RuleSetSummary):
    document: dict[str, Any] = Field(description="what the version means, normalised")
    source: str | None = Field(
        default=None,
        description="the YAML or JSON exactly as its author published it, comments and all "
        "(null for versions published before sources were kept)",
    )


class ChallengerPromoted(BaseModel):
    leads: int = Field(description="leads that took the challenger's scores")
    moved: int = Field(description="leads whose stage changed (transitions, reason rescore)")


class Activation(BaseModel):
    version: int
    activated_by: str
    activated_at: datetime
    rescore_job: str | None = Field(description="id of the re-scoring job, with ?rescore=true")
    challenger: ChallengerPromoted | None = Field(
        default=None, description="set when the version activated was the challenger"
    )


class ProposeRequest(BaseModel):
    model_config = STRICT_BODY

    since: AwareDatetime | None = Field(
        default=None, strict=False, description="handoffs from (default: a year before until)"
    )
    until: AwareDatetime | None = Field(
        default=None, strict=False, description="handoffs before (default: now)"
    )
    target: Literal["won", "qualified"] = Field(
        default="won", description="learn won vs lost, or qualified vs rejected"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="the held-out split's seed")
    score: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="fit only the rules that count for this score, on the leads it qualified "
        "(default: every rule, every lead handed off)",
    )


class TrainRequest(BaseModel):
    model_config = STRICT_BODY

    score: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")] = Field(
        default="likelihood", description="the learned score's name in the new version"
    )
    target: Literal["won", "qualified"] = Field(
        default="won", description="learn won vs lost, or qualified vs rejected"
    )
    since: AwareDatetime | None = Field(
        default=None, strict=False, description="handoffs from (default: a year before until)"
    )
    until: AwareDatetime | None = Field(
        default=None, strict=False, description="handoffs before (default: now)"
    )
    horizon_days: float = Field(
        default=90, gt=0, le=730, description="the outcome counted if it came within this"
    )


class TrainingPublic(BaseModel):
    """A learned score trained on sales' outcomes and published in a new, inactive version."""

    version: int = Field(description="the new, inactive version with the learned score")
    source_version: int
    score: str
    target: str
    since: datetime
    until: datetime
    report: dict[str, Any] = Field(
        description="held out (the most recent 20% of handoffs): AUC of the model and of "
        "the rules' score, log loss, calibration by decile with each decile's standard "
        "error, conversion by grade band, the top two bands' share of leads and "
        "conversions, and the features by weight"
    )


class ProposedRule(BaseModel):
    rule_id: str
    old_points: float
    new_points: float


class ProposalPublic(BaseModel):
    version: int = Field(description="the new, inactive version")
    source_version: int
    since: datetime
    until: datetime
    target: str
    seed: int
    score: str | None = Field(default=None, description="the score whose rules were fitted")
    comment: str
    rules: list[ProposedRule]
    unchanged: list[str] = Field(description="rules fewer than 10 decided leads hit: points kept")
    samples: int
    good_outcomes: int
    trained_on: int
    held_out: int
    auc_old: float = Field(description="held-out AUC of the source version's points")
    auc_proposed: float = Field(description="held-out AUC of the proposed points")


class ChallengerStatus(BaseModel):
    version: int
    started_by: str
    started_at: datetime
    warmed_at: datetime | None = Field(
        description="when every lead that existed at the start had been replayed under it"
    )
    leads_warm: int = Field(description="leads with challenger state")
    leads_live: int
    journey_phases: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="leads per buyer-journey phase: `live` (the active version) and "
        "`challenger` (its own state)",
    )


class ChallengerStopped(BaseModel):
    version: int
    stopped_by: str


class ChallengerStarted(ChallengerStatus):
    warm_up_job: str


class FieldChange(BaseModel):
    field: str
    from_: Any = Field(alias="from")
    to: Any


class RuleChange(BaseModel):
    id: str
    changes: list[FieldChange]


class RuleDiff(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[RuleChange]


class RuleSetDiff(BaseModel):
    from_version: int
    to_version: int
    rules: RuleDiff
    settings: list[FieldChange]


class SimulateRequest(BaseModel):
    events: list[dict[str, Any]] = Field(max_length=10_000, description="Segment events")


class TrajectoryStep(BaseModel):
    index: int
    message_id: str
    type: str
    occurred_at: datetime
    hits: list[Hit]
    score: Score
    scores: dict[str, float] = Field(
        default_factory=dict, description="each score's total after the event (several scores)"
    )
    stage: Stage
    journey_phase: str | None = None
    merged: str | None
    transitions: list[str]


class SimulatedLead(BaseModel):
    lead_id: str
    stage: Stage
    journey_phase: str | None = None
    score: Score
    signals: list[Signal] = Field(
        description="every rule behind the score, largest contribution first; the "
        "contributions add up to the total to the cent"
    )
    scores: dict[str, ScoreEntry] = Field(default_factory=dict)
    label: str | None = None
    signals_by_score: dict[str, list[Signal]] = Field(default_factory=dict)
    qualified: dict[str, Stage] = Field(default_factory=dict)
    trajectory: list[TrajectoryStep]


class Rejected(BaseModel):
    index: int
    error: str
    detail: str


class SimulatedAccount(BaseModel):
    account_id: str
    stage: AccountStage
    journey_phase: str | None = None
    score: AccountScore
    roles_covered: list[str]
    roles_missing: list[str]
    top_members: list[MemberShare]


class SimulationResult(BaseModel):
    ruleset_version: int
    leads: list[SimulatedLead]
    transitions: list[dict[str, Any]]
    notifications: list[dict[str, Any]]
    accounts: list[SimulatedAccount]
    account_transitions: list[dict[str, Any]]
    journey_moves: list[JourneyMove] = Field(
        default_factory=list, description="every buyer-journey move, in event order"
    )
    rejected: list[Rejected]
    duplicates: list[int]
    crawlers: list[int] = Field(
        default_factory=list,
        description="indexes of events left out as a crawler's (the rule set's `bots` list)",
    )


class ImpactRequest(BaseModel):
    model_config = STRICT_BODY

    days: float = Field(default=30, gt=0, le=3650)


class JobProgress(BaseModel):
    done: int
    total: int | None
    fraction: float | None


class JobPublic(BaseModel):
    id: str
    kind: Literal["rescore", "impact", "challenger-warm-up"]
    status: Literal["running", "succeeded", "failed"]
    params: dict[str, Any]
    progress: JobProgress
    result: dict[str, Any] | None
    error: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobAccepted(BaseModel):
    job_id: str
    status_url: str


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


class FeedbackResponse(BaseModel):
    feedback_id: str
    lead_id: str
    outcome: str
    result: Literal["applied"]
    duplicate: bool = Field(description="true when this feedback_id was already applied")
    transition: TransitionRecord | None = Field(description="the move it made (first time)")


class StageChange(BaseModel):
    """A stage set by hand (an admin correcting the lifecycle), with the reason why."""

    model_config = STRICT_BODY

    stage: Stage
    reason: StorableText = Field(
        min_length=1, max_length=500, description="why, in words (audited)"
    )


class Adjustment(BaseModel):
    """An admin sets (`set`) or changes (`add`) a lead's engagement in one score (`score`)
    or in all of them (no `score`), with the reason why."""

    model_config = STRICT_BODY

    score: str | None = Field(
        default=None, max_length=40, description="the score's name; all scores when left out"
    )
    operation: Literal["set", "add"]
    value: float = Field(ge=-10_000, le=10_000, allow_inf_nan=False)
    reason: StorableText = Field(
        min_length=1,
        max_length=500,
        description="why: annual_reset, bot_activity, opportunity_lost, or words (audited, "
        "on the transition it makes and in the lead's explanation)",
    )


class AdjustmentResult(BaseModel):
    lead_id: str
    scores: dict[str, ScoreEntry] = Field(description="the lead's scores after the adjustment")
    transition: TransitionRecord | None = Field(description="the move it earned, if any")


class AccountAdjustmentResult(BaseModel):
    account_id: str
    scores: dict[str, AccountScore] = Field(description="the account's scores after it")
    transition: AccountTransitionRecord | None = Field(description="the move it earned, if any")


class StageChangeResult(BaseModel):
    lead_id: str
    transition: TransitionRecord


class StageFigures(BaseModel):
    entered: int
    median_seconds_in_stage: float | None
    p90_seconds_in_stage: float | None


class Conversion(BaseModel):
    from_: str = Field(alias="from")
    to: str
    entered: int
    converted: int
    rate: float | None


class SlaFigures(BaseModel):
    handoffs: int
    answered_in_time: int
    answered_late: int
    breached_unanswered: int
    open: int
    superseded: int
    compliance: float | None = Field(description="answered in time / handoffs that fell due")
    median_follow_up_seconds: float | None


class Rejection(BaseModel):
    reason: str | None
    count: int


class AccountFunnel(BaseModel):
    """Accounts entering each stage in the window, time in stage, and conversion to the next
    stage (engaged -> mqa -> opportunity -> customer)."""

    stages: dict[str, StageFigures]
    conversion: list[Conversion]


class FunnelReport(BaseModel):
    since: datetime
    until: datetime
    stages: dict[str, StageFigures]
    conversion: list[Conversion]
    sla: SlaFigures
    rejections: list[Rejection]
    accounts: AccountFunnel
    by_score: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="per stage (mql, sal, sql): entries in the window by the score that "
        "qualified them (a move two scores made counts for both)",
    )
    by_label: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per stage: entries by the lead's label at the move"
    )


class PhaseConversion(BaseModel):
    reached: int = Field(description="leads that reached the stage at or after entering the phase")
    rate: float | None


class JourneyConversion(BaseModel):
    entered: int = Field(description="leads entering the phase in the window")
    mql: PhaseConversion
    sql: PhaseConversion
    won: PhaseConversion = Field(description="reached customer")


class NextStep(BaseModel):
    content: str = Field(description="a page path or a track event name (case-folded)")
    moved_on: int = Field(description="leads that saw it in the phase and then moved on")
    stalled: int = Field(description="leads that saw it in the phase and did not move on")
    lift: float = Field(
        description="the movers' share that saw it over the others' share (the latter with "
        "one added to both counts): above 1, it comes before moving on more than before "
        "stalling"
    )


class PhaseFigures(BaseModel):
    phase: str
    name: str
    leads_now: int
    accounts_now: int
    entered: int = Field(description="leads entering the phase in the window")
    median_seconds_in_phase: float | None = Field(
        description="of the leads entering it in the window, from entering to their next "
        "move (stays not over yet do not count)"
    )
    accounts_entered: int
    accounts_median_seconds_in_phase: float | None
    channels: dict[str, int] = Field(
        description="the channels of the events that moved leads into the phase, most first"
    )
    conversion: JourneyConversion
    moved_on: int = Field(description="leads that moved on from the phase in the window")
    stalled: int = Field(
        description="leads that fell back from the phase in the window or are in it now"
    )
    next_steps: list[NextStep] = Field(
        description="what the leads that moved on saw in the phase, highest lift first (at most 10)"
    )


class PhaseMove(BaseModel):
    subject: Literal["lead", "account"]
    from_phase: str | None
    to_phase: str | None
    reason: Literal["evidence", "quiet", "merge", "members"]
    count: int


class JourneyReport(BaseModel):
    """GET /v1/journey: the buyer journey now and in a window."""

    since: datetime
    until: datetime
    phases: list[PhaseFigures] = Field(description="in the active rule set's order")
    moves: list[PhaseMove] = Field(description="moves in the window, most first")


class OutcomeFigures(BaseModel):
    leads: int
    share: float | None = Field(description="of the leads handed off")
    median_seconds: float | None = Field(description="from the handoff to this outcome")


class ScoreBand(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    decile: int | None = None
    from_: float | None = Field(default=None, alias="from")
    to: float | None = None
    low: float | None = None
    high: float | None = None
    leads: int
    qualified_share: float | None
    won_share: float | None


class ScoreBands(BaseModel):
    deciles: list[ScoreBand]
    fixed: list[ScoreBand]


class RuleOutcome(BaseModel):
    rule_id: str
    won_leads_hit: int
    lost_leads_hit: int
    won_share_hit: float | None
    lost_share_hit: float | None
    lift: float | None = Field(
        description="P(won | hit the rule before the handoff) / P(won), among won and lost leads"
    )


class MqlDefinition(BaseModel):
    handed_off: int
    sales_qualified: int
    qualified_and_handed_off: int
    missed: int = Field(description="leads sales qualified that the version never handed off")
    precision: float | None
    recall: float | None


class AccountOutcome(BaseModel):
    accounts: int = Field(description="MQAs with a member lead that had this outcome after")
    share: float | None


class AccountReview(BaseModel):
    """The same for accounts: those the version moved to `mqa` in the window."""

    mqa: int
    outcomes: dict[str, AccountOutcome]
    sales_qualified: int = Field(description="accounts with a member sales qualified")
    qualified_and_mqa: int
    missed: int = Field(description="accounts with a qualified member that never reached mqa")
    precision: float | None
    recall: float | None


class ScoreReview(BaseModel):
    handed_off: int
    qualified: int = Field(description="of those, leads sales qualified")
    won: int
    precision: float | None = Field(description="qualified / handed_off")
    recall: float | None = Field(description="of every lead sales qualified in the window")
    lift: float | None = Field(description="its leads' won share over every handed-off lead's")
    fixed: list[ScoreBand] = Field(description="bands of this score's total at the handoff")


class ReviewReport(BaseModel):
    """GET /v1/review: what sales did with the leads a version handed off in a window."""

    version: int
    scored_by: Literal["live", "challenger"] = Field(
        description="`challenger`: computed on the stages the challenger gave the same leads"
    )
    since: datetime
    until: datetime
    handed_off: int
    outcomes: dict[str, OutcomeFigures]
    score_bands: ScoreBands
    by_score: dict[str, ScoreReview] = Field(
        default_factory=dict,
        description="per score: the leads it qualified for the handoff (a move two scores made "
        "counts for both), their outcomes, lift and bands of that score's total",
    )
    rules: list[RuleOutcome]
    mql_definition: MqlDefinition
    accounts: AccountReview
    compared_with: ReviewReport | None = Field(
        default=None,
        description="for a challenger: the active version's report over the same window",
    )


class SegmentBatch(BaseModel):
    batch: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class Accepted(BaseModel):
    accepted: int = Field(description="events the broker acknowledged for scoring")
    # Segment's tracking API answers {"success": true}; its SDKs and RudderStack's read 200.
    success: bool = True
    refused: list[Rejected] = Field(
        default_factory=list,
        description="events of the batch refused, by index, with the reason; each is on the "
        "dead-letter topic with the same reason (the others were accepted)",
    )


class ConsoleSession(BaseModel):
    """A signed-in console session (no secret: the id only names it)."""

    id: str = Field(description="names the session for ending it; not its cookie")
    token_name: str
    role: str
    client: str | None = Field(description="the address it signed in from")
    user_agent: str | None
    created_at: datetime
    last_seen_at: datetime = Field(description="its latest request (to within a minute)")
    expires_at: datetime = Field(description="idle timeout or absolute lifetime, the sooner")
    token_configured: bool = Field(
        description="false: its token left the configuration; it ends at its next request"
    )


class ConsoleSessionList(BaseModel):
    items: list[ConsoleSession]


class SessionsEnded(BaseModel):
    ended: int = Field(description="how many sessions ended")


class AccountMember(BaseModel):
    lead_id: str
    role: str | None = Field(description="committee role (null: none, not counted)")
    stage: Stage | None = Field(description="the lead's stage (null if it no longer exists)")
    engagement: float = Field(description="the member's engagement as of its latest event")
    counted: float = Field(
        description="what the member adds to the account's engagement (top members, capped); "
        "the counted shares add up to `score.engagement`"
    )
    last_activity_at: datetime
    learned: dict[str, float] = Field(
        default_factory=dict,
        description="the member's learned scores (0-100, a probability of the outcome the "
        "model learned) as of its latest event, by score name; empty when the active "
        "version has none. Their reasons are on the lead",
    )


class AccountPublic(BaseModel):
    """GET /v1/accounts/{account_id}: an account's score, stage and buying committee."""

    account_id: str
    name: str | None
    stage: AccountStage
    stage_entered_at: datetime | None
    score: AccountScore
    score_as_of: datetime | None = Field(description="the account's clock: its latest member event")
    scores: dict[str, AccountScore] = Field(
        default_factory=dict, description="every score of the account by name"
    )
    fit_rules: list[str]
    roles_covered: list[str]
    roles_missing: list[str]
    roles_required: list[str]
    members: list[AccountMember] = Field(description="most engaged first")
    top_signals: list[Signal] = Field(
        description="the engagement rules behind the members' engagement, summed across "
        "members, largest first"
    )
    ruleset_version: int
    journey: JourneyPosition | None = Field(
        default=None,
        description="where the account stands in the buyer journey: placed by its members "
        "(journey.accounts in the rule set)",
    )


class AccountSummary(BaseModel):
    account_id: str
    name: str | None
    stage: AccountStage
    score: AccountScore
    roles_covered: list[str]
    member_count: int
    scores: dict[str, float] = Field(
        default_factory=dict,
        description="each score's total when the account was last written (several scores)",
    )
    journey_phase: str | None = Field(default=None, description="the buyer-journey phase")
    updated_at: datetime


class AccountPage(BaseModel):
    items: list[AccountSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class AccountHistory(BaseModel):
    """An account's stage changes, oldest first, each with its score and committee."""

    account_id: str
    transitions: list[AccountTransitionRecord]
    journey: list[JourneyMove] = Field(
        default_factory=list, description="the account's buyer-journey moves, oldest first"
    )


class AccountFeedbackBody(BaseModel):
    """Sales' word on an account: opportunity, won, lost (back to target), disqualified,
    reopened (a disqualified account back to target)."""

    model_config = STRICT_BODY

    feedback_id: StorableText = Field(min_length=1, max_length=200)
    outcome: Literal["opportunity", "won", "lost", "disqualified", "reopened"]
    reason: StorableText | None = Field(default=None, max_length=500)


class AccountFeedbackResult(BaseModel):
    feedback_id: str
    account_id: str
    duplicate: bool = Field(description="true when this feedback_id was already applied")
    transition: AccountTransitionRecord


# -- a person's data, exported on request (docs/operations/personal-data.md) -----------------


class MergedId(BaseModel):
    id: str = Field(description="an anonymous id, or an earlier user id, merged into the lead")
    linked_at: datetime


class ExportedEvent(BaseModel):
    message_id: str
    type: str
    occurred_at: datetime
    event: dict[str, Any] = Field(
        description="the event as stored: its page, properties, traits and context"
    )
    hits: list[Any] = Field(description="the rules it hit: [rule id, points, counted]")
    points: float
    ruleset_version: int


class ExportedHandoff(BaseModel):
    transition_id: str
    stage: str
    owner: str
    entered_at: datetime
    respond_by: datetime
    status: str
    answered_at: datetime | None
    feedback_id: str | None
    breached_at: datetime | None


class ExportedFeedback(BaseModel):
    feedback_id: str
    outcome: str
    reason: str | None
    given_by: str | None
    at: datetime
    result: str
    transition_id: str | None


class ExportedBeforeMerge(BaseModel):
    """What was recorded under an id merged into the lead, before it joined (its events moved
    to the lead with it, and are in the lead's `events`)."""

    id: str
    transitions: list[TransitionRecord] = Field(description="as published, oldest first")
    journey: list[JourneyMove] = Field(description="its buyer-journey moves, oldest first")
    handoffs: list[ExportedHandoff]
    feedback: list[ExportedFeedback]


class ExportedLead(BaseModel):
    """Everything held under one lead id, and under the ids merged into it."""

    lead_id: str
    traits: dict[str, Any] = Field(description="every trait held, as last sent")
    merged_ids: list[MergedId]
    created_at: datetime
    now: LeadPublic = Field(description="the lead as GET /v1/leads/{lead_id} shows it")
    history: LeadHistory = Field(
        description="as GET /v1/leads/{lead_id}/history shows it: each event's part of the "
        "score, the transitions, adjustments and buyer-journey moves"
    )
    events: list[ExportedEvent] = Field(description="every scored event held, oldest first")
    handoffs: list[ExportedHandoff] = Field(
        description="each handoff to sales: the notification's owner, its follow-up deadline "
        "and how it was answered"
    )
    feedback: list[ExportedFeedback]
    before_merge: list[ExportedBeforeMerge] = Field(
        default_factory=list,
        description="for each merged id that has any, the records kept under it from before "
        "it joined the lead",
    )


class PersonExport(BaseModel):
    """Everything the service holds on one person (right of access), as one document."""

    request_id: str = Field(description="the export's request (GET /v1/people/requests)")
    found_by: Literal["lead_id", "user_id", "anonymous_id", "email"]
    exported_at: datetime
    leads: list[ExportedLead] = Field(
        description="one per lead the person is known as (an e-mail address can name several)"
    )
    truncated: bool = Field(
        description="true when a list reached its limit (100,000 rows) and was cut"
    )


PersonIdKind = Literal["lead_id", "user_id", "anonymous_id", "email"]


class PersonNamed(BaseModel):
    """A person, named by exactly one of their ids or their e-mail address."""

    model_config = STRICT_BODY

    lead_id: str | None = Field(default=None, min_length=1, max_length=512)
    user_id: str | None = Field(default=None, min_length=1, max_length=512)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=512)
    email: str | None = Field(
        default=None,
        min_length=3,
        max_length=512,
        description="every lead whose `email` trait is this address, in any case",
    )


class ErasureRequest(PersonNamed):
    """Erase a person: every row of every lead they are known as."""

    suppress: bool = Field(
        default=True,
        description="keep their ids and address on the suppression list (as keyed hashes), "
        "so later events for them are dropped; false lets them come back as new leads",
    )


class PersonRequest(BaseModel):
    """A request about a person's data: an erasure, an export or an unsuppress. It keeps
    what kind of id named the person, never the id."""

    id: str
    kind: Literal["erase", "export", "unsuppress"]
    status: Literal["received", "done", "failed"] = Field(
        description="received: waiting to be carried out (erasures); done; failed (`failure` "
        "says why)"
    )
    found_by: PersonIdKind
    suppress: bool = Field(description="erasures: whether the person stays suppressed")
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    leads: int | None = Field(description="the leads the person was known as")
    removed: dict[str, int] | None = Field(
        description="rows removed (or, for an account's history, stripped of the lead's id) "
        "per table"
    )
    failure: str | None


class PersonRequestList(BaseModel):
    requests: list[PersonRequest]
