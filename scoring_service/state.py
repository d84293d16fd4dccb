"""A lead's scoring state and its account, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

# The fields of a `LeadState.signals` entry.
VALUE: Final = 0
AS_OF: Final = 1
HITS: Final = 2
IGNORED: Final = 3
LAST_SEEN: Final = 4


@dataclass(slots=True)
class JourneyState:
    """Where a lead (or an account) stands in the buyer journey (scoring_service/journey.py).

    `phase` is None until an event is evidence of one. `evidence_at` is the latest event
    time that was evidence of the phase or a later one: the quiet time counts from there.
    `seen` holds the content (page paths, track event names) seen while in the phase, up to
    journey.MAX_SEEN distinct items, the latest last: what the phase's leads did before
    they moved on or stalled. Touches are [channel, event time].
    """

    phase: str | None = None
    since: float | None = None
    evidence_at: float | None = None
    seen: list[str] = field(default_factory=list)
    first_touch: list[Any] | None = None
    last_touch: list[Any] | None = None
    # The channel of the event that moved the lead into each phase.
    entered_via: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def to_doc(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "since": self.since,
            "evidence_at": self.evidence_at,
            "seen": self.seen,
            "first": self.first_touch,
            "last": self.last_touch,
            "via": self.entered_via,
            "seq": self.seq,
        }

    @staticmethod
    def from_doc(doc: dict[str, Any]) -> JourneyState:
        return JourneyState(
            phase=doc.get("phase"),
            since=doc.get("since"),
            evidence_at=doc.get("evidence_at"),
            seen=list(doc.get("seen") or []),
            first_touch=doc.get("first"),
            last_touch=doc.get("last"),
            entered_via=dict(doc.get("via") or {}),
            seq=int(doc.get("seq") or 0),
        )


# An `Account.members` entry: the member's engagement as of its own clock (its latest event
# time, which is also its last activity) and its committee role.
Member = tuple[float, float, str | None]


@dataclass(slots=True)
class Account:
    """An account from `group` calls, and its score when the rule set scores accounts.

    `version` moves on every change of traits so fit can be refreshed. `members` mirrors
    each member lead's engagement: the account's score is a function of these entries and
    the account's clock (the latest member event time), so it does not depend on the order
    member events arrive in.
    """

    account_id: str
    traits: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    stage: str = "target"
    stage_entered_at: float | None = None
    seq: int = 0
    as_of: float | None = None
    members: dict[str, Member] = field(default_factory=dict)
    fit: float = 0.0
    fit_rules: list[str] = field(default_factory=list)
    fit_key: tuple[int, int] | None = None
    engagement: float = 0.0
    coverage: float = 0.0
    covered: list[str] = field(default_factory=list)
    ruleset_version: int = 0
    # With several scores: each member's named scores' engagement, as of its clock (as
    # `members` keeps the default score's).
    members_by: dict[str, dict[str, float]] = field(default_factory=dict)
    # Admins' adjustments of the account's engagement per score: [points, as of], decayed
    # like engagement from that moment, added to the members' roll-up.
    adjusted: dict[str, list[float]] = field(default_factory=dict)
    # With several scores: each score's total when the account was last written (for lists).
    totals: dict[str, float] | None = None
    # With a buyer journey: each member's phase (its index in the journey), and the
    # account's own place in it.
    member_phases: dict[str, int] = field(default_factory=dict)
    journey: JourneyState | None = None

    @property
    def total(self) -> float:
        return self.fit + self.engagement + self.coverage

    def to_doc(self) -> dict[str, Any]:
        """The scoring-private part of the account, for one JSON column."""
        doc: dict[str, Any] = {
            "members": self.members,
            "fit_rules": self.fit_rules,
            "fit_key": self.fit_key,
        }
        if self.members_by:
            doc["members_by"] = self.members_by
        if self.adjusted:
            doc["adjusted"] = self.adjusted
        if self.totals is not None:
            doc["totals"] = self.totals
        if self.member_phases:
            doc["member_phases"] = self.member_phases
        if self.journey is not None:
            doc["journey"] = self.journey.to_doc()
        return doc

    def load_doc(self, doc: dict[str, Any]) -> None:
        self.members = {
            lead_id: (float(m[0]), float(m[1]), m[2])
            for lead_id, m in (doc.get("members") or {}).items()
        }
        self.fit_rules = doc.get("fit_rules") or []
        key = doc.get("fit_key")
        self.fit_key = (key[0], key[1]) if key else None
        self.members_by = doc.get("members_by") or {}
        self.adjusted = doc.get("adjusted") or {}
        self.totals = doc.get("totals")
        self.member_phases = doc.get("member_phases") or {}
        journey = doc.get("journey")
        self.journey = JourneyState.from_doc(journey) if journey else None


@dataclass(slots=True)
class LeadState:
    """Everything the engine needs to score a lead's next event.

    `engagement` is the decayed sum as of `as_of` (the latest event time seen, T), so a new
    hit costs O(1) and the order events arrive in does not change the result.
    """

    lead_id: str
    stage: str = "lead"
    stage_entered_at: float | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    account_id: str | None = None
    fit: float = 0.0
    fit_rules: list[str] = field(default_factory=list)
    # (rule set version, account version) the fit was computed for.
    fit_key: tuple[int, int] | None = None
    engagement: float = 0.0
    as_of: float | None = None
    # Counted hit times of rules with a limit, oldest first, trimmed to two windows.
    counted: dict[str, list[float]] = field(default_factory=dict)
    # Per engagement rule, what explains its share of `engagement` (indices below): the
    # decayed points it earned as of a moment (at most `as_of`, brought forward lazily so a
    # hit costs O(1)), hits counted, hits a limit ignored, and the last hit's time.
    signals: dict[str, list[float]] = field(default_factory=dict)
    seq: int = 0
    pending_trigger: tuple[str, str] | None = None
    ruleset_version: int = 0
    # Why the lead is not moving further although its score or a trigger says it should
    # (an exclusion, a missing requirement); None when nothing holds it.
    held: str | None = None
    # What the traits allow (engine.allowed_rank), remembered until fit is refreshed (the
    # same traits decide both); not stored: a loaded lead judges it again once.
    allowed: tuple[int, str | None] | None = None
    # The person's role in their account's buying committee, judged with fit.
    committee_role: str | None = None
    # With several scores: the highest stage each score has qualified the lead for (a move
    # it made, or a notification that it qualified too); empty again when recycled.
    qualified: dict[str, str] = field(default_factory=dict)
    # With several scores or grade bands: each score's total and the lead's label as of its
    # clock, kept with the lead so lists can filter and sort by them.
    totals: dict[str, float] | None = None
    label: str | None = None
    # With several scores: the named scores' fit and engagement (as of `as_of`), running
    # sums like `fit` and `engagement` are for the default score. None until derived from
    # `fit_rules` and `signals` (a lead loaded without them, or after a merge or recycle).
    fit_by: dict[str, float] | None = None
    engagement_by: dict[str, float] | None = None
    # With learned scores: each model's part from the engagement rules it weighs, as of
    # `as_of`, by the model's slot (the rule set's learned scores in order), kept up as
    # hits come like `engagement` (scoring_service/model_score.py). The first model's is a
    # float on the lead itself, the others' in a list: read and decayed on every event,
    # it should cost no trip to another object. Not stored: `model_kept` is False until
    # derived from `signals`, and made False again wherever `engagement_by` is cleared.
    model_kept: bool = False
    model_part: float = 0.0
    more_model_parts: list[float] | None = None
    # With a learned score that reads the account: its account's committee coverage and
    # total score as this lead's latest event left them (0 without an account). Stored:
    # the account moves with its other members' events, and the lead's score is as of its
    # own clock.
    account_coverage: float = 0.0
    account_score: float = 0.0
    # With a buyer journey in the rule set: where the lead stands in it.
    journey: JourneyState | None = None

    @property
    def total(self) -> float:
        return self.fit + self.engagement

    def model_part_of(self, slot: int) -> float:
        return self.model_part if slot == 0 else self.more_model_parts[slot - 1]  # type: ignore[index]

    def add_model_part(self, slot: int, amount: float) -> None:
        if slot == 0:
            self.model_part += amount
        else:
            self.more_model_parts[slot - 1] += amount  # type: ignore[index]

    def decay_model_parts(self, factor: float) -> None:
        self.model_part *= factor
        more = self.more_model_parts
        if more:
            for i in range(len(more)):
                more[i] *= factor

    def keep_model_part(self, part: float) -> None:
        """The one learned score's part, derived afresh."""
        self.model_part, self.more_model_parts = part, None
        self.model_kept = True

    def keep_model_parts(self, parts: list[float]) -> None:
        """The learned scores' parts, derived afresh, by slot."""
        self.model_part = parts[0] if parts else 0.0
        self.more_model_parts = parts[1:] if len(parts) > 1 else None
        self.model_kept = True

    def to_doc(self) -> dict[str, Any]:
        """The engine-private part of the state, for one JSON column."""
        doc: dict[str, Any] = {
            "fit_rules": self.fit_rules,
            "fit_key": self.fit_key,
            "counted": self.counted,
            "signals": self.signals,
            "pending_trigger": self.pending_trigger,
        }
        if self.held is not None:
            doc["held"] = self.held
        if self.committee_role is not None:
            doc["role"] = self.committee_role
        if self.qualified:
            doc["qualified"] = self.qualified
        if self.totals is not None:
            doc["totals"] = self.totals
        if self.label is not None:
            doc["label"] = self.label
        if self.engagement_by is not None:
            doc["by_score"] = self.engagement_by
        if self.journey is not None:
            doc["journey"] = self.journey.to_doc()
        if self.account_coverage or self.account_score:
            doc["account"] = [self.account_coverage, self.account_score]
        return doc

    def load_doc(self, doc: dict[str, Any]) -> None:
        self.fit_rules = doc.get("fit_rules") or []
        key = doc.get("fit_key")
        self.fit_key = (key[0], key[1]) if key else None
        self.counted = doc.get("counted") or {}
        self.signals = {
            rule_id: _signal(entry) for rule_id, entry in (doc.get("signals") or {}).items()
        }
        pending = doc.get("pending_trigger")
        self.pending_trigger = (pending[0], pending[1]) if pending else None
        self.held = doc.get("held")
        self.committee_role = doc.get("role")
        self.qualified = doc.get("qualified") or {}
        self.totals = doc.get("totals")
        self.label = doc.get("label")
        self.engagement_by = doc.get("by_score")
        journey = doc.get("journey")
        self.journey = JourneyState.from_doc(journey) if journey else None
        account = doc.get("account")
        self.account_coverage, self.account_score = (
            (float(account[0]), float(account[1])) if account else (0.0, 0.0)
        )


def _signal(entry: list[float]) -> list[float]:
    """A stored signal; states written before contributions were kept decayed held
    [points, hits, last hit], read as if every hit had come at the last one."""
    if len(entry) == 3:
        points, hits, last_seen = entry
        return [points, last_seen, hits, 0, last_seen]
    return entry
