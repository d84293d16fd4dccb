"""Rule-set documents (docs/concepts/scoring.md): what admins publish, validated before use."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from schemas.model_score import ModelSpec

Stage = Literal["lead", "mql", "sal", "sql", "opportunity", "customer", "recycled", "disqualified"]
PromotionStage = Literal["sal", "sql"]

# Globs are matched segment by segment; a cap on wildcards and length keeps that cheap.
MAX_PATTERN_LENGTH = 256
MAX_WILDCARDS = 8
MAX_RULES = 1000
# Words and phrases one `words_any` may list.
MAX_WORDS = 200
# Conditions nest (all / any / not) at most this deep, with at most this many branches each:
# a condition is data, and its cost must stay a small multiple of the event's size.
MAX_CONDITION_DEPTH = 6
MAX_BRANCHES = 50
# The parts of Segment's `context` that conditions (and the stored history) can read.
CONTEXT_KEYS = ("campaign", "page", "referrer", "locale", "location")
OPERATORS = (
    "equals",
    "in",
    "contains_any",
    "words_any",
    "starts_with_any",
    "ends_with_any",
    "between",
    "gte",
    "lte",
    "exists",
)
# Every number in a rule set is finite and within a range (docs/concepts/scoring.md): NaN or
# infinity compare false with everything and a huge duration overflows a date, either of which would
# stop scoring once the version is active. Checked here, once, so that simulation and
# activation never meet a value that publication let through.
RULES_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
# Thresholds, grade bands and minimum scores: 1,000 rules of at most 1,000 points make a lead
# total of at most a million; accounts add their members' roll-up and their own fit.
MAX_SCORE_VALUE = 10_000_000.0
# Values conditions compare traits with (revenue, employees): beyond 1e15 floats stop
# counting whole numbers exactly.
MAX_COMPARED_VALUE = 1e15
# Durations (follow-up deadlines, quiet times): ten years at most.
MAX_DURATION_SECONDS = 3650 * 86400.0
ScoreValue = Annotated[float, Field(ge=-MAX_SCORE_VALUE, le=MAX_SCORE_VALUE)]
ComparedValue = Annotated[float, Field(ge=-MAX_COMPARED_VALUE, le=MAX_COMPARED_VALUE)]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RULE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

Scalar = str | int | float | bool


def parse_duration(text: str | int | float) -> float:
    """Turn '24h', '30m', '2d', '90s' (or a number of seconds) into seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 2d)")
        seconds = float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"a duration is at most 3650d ({MAX_DURATION_SECONDS:.0f} s)")
    return seconds


def check_glob(pattern: str) -> str:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    if pattern.count("*") > MAX_WILDCARDS:
        raise ValueError(f"more than {MAX_WILDCARDS} '*' wildcards")
    return pattern


class Operators(BaseModel):
    """Comparison operators; every one that is set must hold."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    contains_any: list[str] | None = Field(default=None, min_length=1)
    # Whole words and phrases, ignoring case and accents: "vp", "vice president", "head of".
    words_any: list[str] | None = Field(default=None, min_length=1, max_length=MAX_WORDS)
    starts_with_any: list[str] | None = Field(default=None, min_length=1)
    ends_with_any: list[str] | None = Field(default=None, min_length=1)
    between: tuple[ComparedValue, ComparedValue] | None = None
    gte: ComparedValue | None = None
    lte: ComparedValue | None = None
    exists: bool | None = None

    @field_validator("between")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError("between needs [low, high] with low <= high")
        return value

    @field_validator("contains_any", "starts_with_any", "ends_with_any", "words_any")
    @classmethod
    def _short(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if len(item) > MAX_PATTERN_LENGTH:
                raise ValueError(f"value longer than {MAX_PATTERN_LENGTH} characters")
        return value

    @field_validator("words_any")
    @classmethod
    def _words(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if not any(ch.isalnum() for ch in item):
                raise ValueError(f"{item!r} has no letter or digit to match as a word")
        return value

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


class When(Operators):
    """A rule's conditions, all of which must hold. Behaviour: type, event, path,
    properties.<key>, context.<key>. Fit: trait (a dotted path; 'account.<key>' reads the
    account) with operators beside it. Any condition can be combined: all: [...], any: [...],
    not: {...}."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    type: Literal["page", "track", "identify", "group"] | None = None
    event: str | list[str] | None = None
    path: str | list[str] | None = None
    trait: str | None = Field(default=None, min_length=1, max_length=200)
    all_: list[When] | None = Field(
        default=None, alias="all", min_length=1, max_length=MAX_BRANCHES
    )
    any_: list[When] | None = Field(
        default=None, alias="any", min_length=1, max_length=MAX_BRANCHES
    )
    not_: When | None = Field(default=None, alias="not")

    @field_validator("path")
    @classmethod
    def _globs(cls, value: str | list[str] | None) -> str | list[str] | None:
        for pattern in [value] if isinstance(value, str) else value or ():
            check_glob(pattern)
        return value

    @model_validator(mode="after")
    def _shape(self) -> When:
        extras = self.model_extra or {}
        for key, value in extras.items():
            prefix, _, rest = key.partition(".")
            if prefix == "context" and rest.split(".")[0] not in CONTEXT_KEYS:
                raise ValueError(
                    f"unknown condition {key!r}: context conditions read "
                    + ", ".join(f"context.{k}" for k in CONTEXT_KEYS)
                )
            if prefix not in ("properties", "context") or not rest:
                raise ValueError(
                    f"unknown condition {key!r}: use type, event, path, trait with an operator "
                    f"({', '.join(OPERATORS)}), properties.<key>, context.<key>, all, any or not"
                )
            if isinstance(value, dict):
                Operators.model_validate(value)
            elif not isinstance(value, str | int | float | bool | list):
                raise ValueError(f"{key}: expected a value, a list or an operator object")
            else:
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, float) and not math.isfinite(item):
                        raise ValueError(f"{key}: {item} is not a finite number")
        has_operator = not Operators.model_validate(
            {k: getattr(self, k) for k in Operators.model_fields}
        ).is_empty()
        if has_operator and self.trait is None:
            raise ValueError("operators need a 'trait' to compare")
        if self.trait is not None and not has_operator:
            raise ValueError(f"trait {self.trait!r} has no operator ({', '.join(OPERATORS)})")
        if (
            self.type is None
            and self.event is None
            and self.path is None
            and self.trait is None
            and not extras
            and not self.combines()
        ):
            raise ValueError("empty condition: a rule must say when it applies")
        if self.depth() > MAX_CONDITION_DEPTH:
            raise ValueError(f"conditions nest deeper than {MAX_CONDITION_DEPTH} levels")
        return self

    def combines(self) -> bool:
        return self.all_ is not None or self.any_ is not None or self.not_ is not None

    def children(self) -> list[When]:
        return [*(self.all_ or ()), *(self.any_ or ()), *([self.not_] if self.not_ else [])]

    def depth(self) -> int:
        return 1 + max((child.depth() for child in self.children()), default=0)

    def property_conditions(self) -> dict[str, Any]:
        return {
            k[len("properties.") :]: v
            for k, v in (self.model_extra or {}).items()
            if k.startswith("properties.")
        }

    def context_conditions(self) -> dict[str, Any]:
        return {
            k[len("context.") :]: v
            for k, v in (self.model_extra or {}).items()
            if k.startswith("context.")
        }

    def is_behavioural(self) -> bool:
        """Does any part, nested ones included, read the event?"""
        return (
            self.type is not None
            or self.event is not None
            or self.path is not None
            or bool(self.model_extra)
            or any(child.is_behavioural() for child in self.children())
        )

    def reads_traits(self) -> bool:
        """Does any part, nested ones included, read the lead's or account's traits?"""
        return self.trait is not None or any(c.reads_traits() for c in self.children())

    def reads_account(self) -> bool:
        return (self.trait is not None and self.trait.startswith("account.")) or any(
            c.reads_account() for c in self.children()
        )


class Limit(BaseModel):
    model_config = RULES_CONFIG

    count: int = Field(ge=1, le=10_000)
    window_days: float = Field(gt=0, le=3650)


# Several scores per lead (docs/concepts/scores.md): the default one and up to
# MAX_SCORES - 1 named ones, e.g. one per product line.
DEFAULT_SCORE = "default"
MAX_SCORES = 25
_SCORE_ID = r"^[a-z][a-z0-9_]{0,39}$"
ScoreName = Annotated[str, Field(pattern=_SCORE_ID)]


class Rule(BaseModel):
    model_config = RULES_CONFIG

    id: Annotated[str, Field(pattern=_RULE_ID)]
    category: Literal["fit", "engagement"]
    when: When
    points: float = Field(default=0.0, ge=-1000, le=1000)
    # The scores the rule counts for; without it, the default score. A trigger promotes
    # for these scores, and says so on its transition.
    scores: list[ScoreName] | None = Field(default=None, min_length=1, max_length=MAX_SCORES)
    promote_to: PromotionStage | None = None
    disqualify: bool = False
    limit: Limit | None = None
    description: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _category(self) -> Rule:
        if self.category == "fit":
            if self.when.is_behavioural():
                raise ValueError(
                    "a fit rule matches traits only (trait: ...), not type/event/path/"
                    "properties/context"
                )
            if not self.when.reads_traits():
                raise ValueError("a fit rule needs a 'trait' condition")
            if self.limit is not None:
                raise ValueError("a fit rule counts once; 'limit' applies to engagement rules")
        elif not self.when.is_behavioural():
            raise ValueError(
                "an engagement rule needs type, event, path, properties.<key> or context.<key>"
            )
        if (
            "points" not in self.model_fields_set
            and self.promote_to is None
            and not self.disqualify
        ):
            # A rule that adds nothing and moves no one is a rule whose points were lost.
            raise ValueError(
                "a rule needs 'points' (0 is allowed), or 'promote_to' or 'disqualify' to act "
                "without points"
            )
        return self


_QUEUE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Queue(BaseModel):
    """A sales queue; its owners take its leads in turn."""

    model_config = RULES_CONFIG

    owners: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=500
    )


class RoutingRule(BaseModel):
    """Send leads whose traits (or account traits) match to a queue; first match wins."""

    model_config = RULES_CONFIG

    queue: Annotated[str, Field(pattern=_QUEUE)]
    when: When

    @model_validator(mode="after")
    def _traits_only(self) -> RoutingRule:
        if self.when.trait is None or self.when.is_behavioural():
            raise ValueError("a routing rule matches a trait (trait: ... with an operator)")
        return self


class Routing(BaseModel):
    model_config = RULES_CONFIG

    default_queue: Annotated[str, Field(pattern=_QUEUE)] = "default"
    queues: dict[Annotated[str, Field(pattern=_QUEUE)], Queue] = Field(
        default_factory=dict, max_length=200
    )
    rules: list[RoutingRule] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _known_queues(self) -> Routing:
        for index, rule in enumerate(self.rules):
            if rule.queue not in self.queues:
                raise ValueError(f"rules[{index}] sends to queue {rule.queue!r}, not in queues")
        return self


class Thresholds(BaseModel):
    model_config = RULES_CONFIG

    mql: ScoreValue
    sal: ScoreValue
    # Optional: the total at which a lead becomes sales-qualified without sales' word.
    sql: ScoreValue | None = None

    @model_validator(mode="after")
    def _order(self) -> Thresholds:
        if self.sal < self.mql:
            raise ValueError("thresholds.sal must be >= thresholds.mql")
        if self.sql is not None and self.sql < self.sal:
            raise ValueError("thresholds.sql must be >= thresholds.sal")
        return self


MAX_REQUIREMENTS = 50
MAX_EXCLUSIONS = 100
RequirementStage = Literal["mql", "sal", "sql"]


def _traits_only(when: When, what: str) -> When:
    if when.is_behavioural():
        raise ValueError(f"{what} reads traits only (trait: ...), not the event")
    if not when.reads_traits():
        raise ValueError(f"{what} needs a 'trait' condition")
    return when


class Exclusion(BaseModel):
    """Traits that keep a lead out of mql and beyond, without disqualifying it: it keeps
    scoring, and moves on if the traits change (a personal address replaced by a work one)."""

    model_config = RULES_CONFIG

    id: Annotated[str, Field(pattern=_RULE_ID)]
    when: When
    description: str | None = Field(default=None, max_length=500)

    @field_validator("when")
    @classmethod
    def _traits(cls, when: When) -> When:
        return _traits_only(when, "an exclusion")


def _requirement(value: str | When) -> str | When:
    if isinstance(value, When):
        return _traits_only(value, "a requirement")
    if not value or len(value) > 200:
        raise ValueError("a required trait is a dotted path of 1 to 200 characters")
    return value


Requirement = Annotated[str | When, AfterValidator(_requirement)]


class Grades(BaseModel):
    """Bands that grade a score: `fit` holds the least fit for A, B and C (below C is D),
    `engagement` the least engagement for levels 1 and 2 (below 2 is 3). The label joins
    them: A1 is the best fit and the most engaged, D3 the least of both."""

    model_config = RULES_CONFIG

    fit: tuple[ScoreValue, ScoreValue, ScoreValue]
    engagement: tuple[ScoreValue, ScoreValue]

    @model_validator(mode="after")
    def _descending(self) -> Grades:
        if not self.fit[0] >= self.fit[1] >= self.fit[2]:
            raise ValueError("grades.fit lists the least fit for A, B, C: from high to low")
        if not self.engagement[0] >= self.engagement[1]:
            raise ValueError("grades.engagement lists the least for 1, 2: from high to low")
        return self


class NamedScore(BaseModel):
    """A score beside the default one: its own thresholds, the queue its leads go to when it
    qualifies them, and its grade bands. With `model`, a learned score: the probability of
    the model's outcome as 0-100 points (thresholds in points, graded by `model.bands`),
    which no rule counts for (schemas/model_score.py)."""

    model_config = RULES_CONFIG

    description: str | None = Field(default=None, max_length=500)
    thresholds: Thresholds
    queue: Annotated[str, Field(pattern=_QUEUE)] | None = None
    grades: Grades | None = None
    model: ModelSpec | None = None

    @model_validator(mode="after")
    def _model_graded_by_bands(self) -> NamedScore:
        if self.model is not None and self.grades is not None:
            raise ValueError("a model score is graded by model.bands, not grades")
        return self


MAX_QUALIFY_LENGTH = 500

# Crawlers and scripts that visit pages like people do: their events are counted, not scored.
# Names, not "bot" alone: "Cubot" is a phone maker whose browsers say so.
DEFAULT_BOT_AGENTS = (
    "googlebot",
    "bingbot",
    "yandexbot",
    "baiduspider",
    "duckduckbot",
    "slurp",
    "applebot",
    "ahrefsbot",
    "semrushbot",
    "mj12bot",
    "petalbot",
    "gptbot",
    "facebookexternalhit",
    "linkedinbot",
    "twitterbot",
    "headlesschrome",
    "python-requests",
    "curl/",
    "wget/",
    "crawler",
    "spider",
)


class Bots(BaseModel):
    """Events whose `context.userAgent` contains any of `user_agents` (ignoring case) are
    counted (leadscore_events_consumed_total{result="bot"}) and neither scored nor stored;
    an empty list turns the filter off."""

    model_config = RULES_CONFIG

    user_agents: list[Annotated[str, Field(min_length=2, max_length=MAX_PATTERN_LENGTH)]] = Field(
        default_factory=lambda: list(DEFAULT_BOT_AGENTS), max_length=MAX_WORDS
    )


class Decay(BaseModel):
    model_config = RULES_CONFIG

    half_life_days: float = Field(default=0, ge=0, le=3650)


MAX_ROLES = 20
MAX_ACCOUNT_FIT_RULES = 200
_ROLE_ID = r"^[a-z][a-z0-9_]{0,39}$"


class CommitteeRole(BaseModel):
    """A role in the buying committee, and who holds it: the first role whose conditions
    hold on a person's traits (and their account's, as `account.<key>`). A `committee_role`
    trait naming a role (sent by the CRM) overrides the conditions."""

    model_config = RULES_CONFIG

    id: Annotated[str, Field(pattern=_ROLE_ID)]
    name: str | None = Field(default=None, max_length=100)
    when: When
    # What an account earns while this role is covered (committee coverage).
    points: float = Field(default=0.0, ge=0, le=1000)

    @field_validator("when")
    @classmethod
    def _traits(cls, when: When) -> When:
        return _traits_only(when, "a committee role")


class AccountFitRule(BaseModel):
    """Account fit: conditions on the account's own traits (industry, size, revenue,
    country, technologies: `trait: industry`, not `account.industry`)."""

    model_config = RULES_CONFIG

    id: Annotated[str, Field(pattern=_RULE_ID)]
    when: When
    points: float = Field(ge=-1000, le=1000)
    description: str | None = Field(default=None, max_length=500)
    # The scores the rule counts for (default: the default score), as a lead rule's.
    scores: list[ScoreName] | None = Field(default=None, min_length=1, max_length=MAX_SCORES)

    @field_validator("when")
    @classmethod
    def _traits(cls, when: When) -> When:
        return _traits_only(when, "an account fit rule")


class Rollup(BaseModel):
    """Account engagement: the `top_members` most engaged members' engagement, each capped
    at `member_cap` so one enthusiast cannot make an account."""

    model_config = RULES_CONFIG

    top_members: int = Field(default=5, ge=1, le=100)
    member_cap: float = Field(default=50.0, gt=0, le=10_000)
    # `with_role`: only members holding a committee role count (a student does not).
    members: Literal["all", "with_role"] = "with_role"


class Coverage(BaseModel):
    """A role is covered while a member holding it has at least `min_engagement` and was
    active in the last `window_days` (of the account's event time)."""

    model_config = RULES_CONFIG

    window_days: float = Field(default=30.0, gt=0, le=3650)
    min_engagement: float = Field(default=10.0, ge=0, le=10_000)
    # Roles that must be covered before an account is marketing-qualified.
    required: list[Annotated[str, Field(pattern=_ROLE_ID)]] = Field(
        default_factory=list, max_length=MAX_ROLES
    )


class AccountThresholds(BaseModel):
    """`engaged`: the members' engagement (the roll-up) an account needs to be engaged;
    `mqa`: the total score a marketing-qualified account needs (with the required roles)."""

    model_config = RULES_CONFIG

    engaged: ScoreValue
    mqa: ScoreValue


class AccountRules(BaseModel):
    """How accounts are scored and qualified (docs/concepts/accounts.md)."""

    model_config = RULES_CONFIG

    roles: list[CommitteeRole] = Field(default_factory=list, max_length=MAX_ROLES)
    fit: list[AccountFitRule] = Field(default_factory=list, max_length=MAX_ACCOUNT_FIT_RULES)
    rollup: Rollup = Rollup()
    coverage: Coverage = Coverage()
    thresholds: AccountThresholds
    # The account trait naming its owner (set by the CRM); without it, `account_qualified`
    # goes to the queue the routing rules pick from the account's traits.
    owner_trait: str = Field(default="owner", min_length=1, max_length=200)

    @model_validator(mode="after")
    def _known_roles(self) -> AccountRules:
        ids = [role.id for role in self.roles]
        if len(set(ids)) != len(ids):
            raise ValueError("committee role ids must be unique")
        fit_ids = [rule.id for rule in self.fit]
        if len(set(fit_ids)) != len(fit_ids):
            raise ValueError("account fit rule ids must be unique")
        for role in self.coverage.required:
            if role not in ids:
                raise ValueError(f"coverage.required names {role!r}, not among the roles")
        return self


# -- the buyer journey (docs/concepts/journey.md) ----------------------------------------------

MAX_PHASES = 12
MAX_PHASE_RULES = 50
MAX_CHANNEL_RULES = 30
_PHASE_ID = r"^[a-z][a-z0-9_]{0,39}$"
PhaseId = Annotated[str, Field(pattern=_PHASE_ID)]
# A phase as a list filter (`?phase=`): an id, or empty for a form's "any".
PHASE_FILTER = r"^([a-z][a-z0-9_]{0,39})?$"


class PhaseRule(BaseModel):
    """Evidence that a lead is in a phase: an event matching `when` (the rule language's
    conditions: the event, the lead's and account's traits), while the lead's stage is one of
    `stages` and its default score is at least `min_score` (both as the event arrives)."""

    model_config = RULES_CONFIG

    id: Annotated[str, Field(pattern=_RULE_ID)]
    when: When
    stages: list[Stage] | None = Field(default=None, min_length=1)
    min_score: ScoreValue | None = None
    description: str | None = Field(default=None, max_length=500)

    @field_validator("when")
    @classmethod
    def _behaviour(cls, when: When) -> When:
        if not when.is_behavioural():
            raise ValueError(
                "a phase is entered by events: the condition needs type, event, path, "
                "properties.<key> or context.<key>"
            )
        return when


class Phase(BaseModel):
    """A step of the buyer journey. A lead moves forward to the furthest phase an event is
    evidence of; after `quiet` without evidence of this phase or a later one, it falls back
    to `falls_back_to` (by default the phase before)."""

    model_config = RULES_CONFIG

    id: PhaseId
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    entered_by: list[PhaseRule] = Field(default_factory=list, max_length=MAX_PHASE_RULES)
    quiet: float | None = None
    falls_back_to: PhaseId | None = None

    @field_validator("quiet", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if value is not None else None


class ChannelRule(BaseModel):
    """An event comes from channel `id` when `when` holds on it (its context.campaign, UTM
    parameters, context.referrer, context.page.referrer); the first rule that holds wins,
    and an event none holds for is `direct`."""

    model_config = RULES_CONFIG

    id: PhaseId
    when: When
    description: str | None = Field(default=None, max_length=500)

    @field_validator("when")
    @classmethod
    def _context(cls, when: When) -> When:
        if when.reads_traits():
            raise ValueError("a channel is read from the event's context, not from traits")
        return when


_PAID_MEDIA = [
    "cpc",
    "ppc",
    "paid",
    "paidsearch",
    "paid_search",
    "paid-search",
    "sem",
    "display",
    "cpm",
    "banner",
    "retargeting",
    "paid_social",
    "paid-social",
    "paidsocial",
]
_SOCIAL_SITES = [
    "linkedin.",
    "lnkd.in",
    "facebook.",
    "fb.com",
    "twitter.",
    "//t.co/",
    "//x.com",
    "instagram.",
    "youtube.",
    "reddit.",
    "tiktok.",
]
_SEARCH_SITES = [
    "google.",
    "bing.",
    "duckduckgo.",
    "search.yahoo.",
    "baidu.",
    "yandex.",
    "ecosia.",
    "search.brave.",
]


def _referred_from(sites: list[str]) -> dict[str, Any]:
    return {
        "any": [
            {"context.page.referrer": {"contains_any": sites}},
            {"context.referrer.url": {"contains_any": sites}},
        ]
    }


def default_channels() -> list[ChannelRule]:
    """Paid first (a search ad comes from a search engine too), then e-mail, social,
    search, any other referrer; see docs/concepts/journey.md."""
    return [
        ChannelRule.model_validate(rule)
        for rule in (
            {"id": "paid", "when": {"context.campaign.medium": {"in": _PAID_MEDIA}}},
            {
                "id": "email",
                "when": {
                    "any": [
                        {"context.campaign.medium": {"in": ["email", "e-mail", "newsletter"]}},
                        {"context.campaign.source": {"in": ["email", "newsletter"]}},
                    ]
                },
            },
            {
                "id": "social",
                "when": {
                    "any": [
                        {
                            "context.campaign.medium": {
                                "in": ["social", "social-network", "social-media", "sm"]
                            }
                        },
                        _referred_from(_SOCIAL_SITES),
                    ]
                },
            },
            {
                "id": "search",
                "when": {
                    "any": [
                        {"context.campaign.medium": {"in": ["organic", "seo"]}},
                        _referred_from(_SEARCH_SITES),
                    ]
                },
            },
            {
                "id": "referral",
                "when": {
                    "any": [
                        {"context.page.referrer": {"exists": True}},
                        {"context.referrer.url": {"exists": True}},
                        {"context.campaign.source": {"exists": True}},
                    ]
                },
            },
        )
    ]


class AccountJourney(BaseModel):
    """An account's phase: the furthest phase that at least `at_least` of its members
    reached, counting each committee role once (`count: roles`) or every member."""

    model_config = RULES_CONFIG

    at_least: int = Field(default=2, ge=1, le=100)
    count: Literal["roles", "members"] = "roles"


class Journey(BaseModel):
    """The buyer journey's phases, in order, and where events come from."""

    model_config = RULES_CONFIG

    phases: list[Phase] = Field(min_length=1, max_length=MAX_PHASES)
    channels: list[ChannelRule] = Field(
        default_factory=default_channels, max_length=MAX_CHANNEL_RULES
    )
    accounts: AccountJourney = AccountJourney()

    @model_validator(mode="after")
    def _consistent(self) -> Journey:
        ids = [phase.id for phase in self.phases]
        if len(set(ids)) != len(ids):
            raise ValueError("journey phase ids must be unique")
        rule_ids = [rule.id for phase in self.phases for rule in phase.entered_by]
        if len(set(rule_ids)) != len(rule_ids):
            raise ValueError("journey phase rule ids must be unique")
        for index, phase in enumerate(self.phases):
            target = phase.falls_back_to
            if target is not None and (target not in ids or ids.index(target) >= index):
                raise ValueError(
                    f"journey.phases[{index}] ({phase.id}) falls back to {target!r}: "
                    "name a phase before it"
                )
        channel_ids = [channel.id for channel in self.channels]
        if len(set(channel_ids)) != len(channel_ids):
            raise ValueError("journey channel ids must be unique")
        # A rule may be named `direct`: the site's own pages as referrers (in-site
        # navigation) listed first, so that they do not count as referrals.
        return self


class RuleSetDocument(BaseModel):
    """A rule set as published: immutable once stored under a version number."""

    model_config = RULES_CONFIG

    name: str = Field(min_length=1, max_length=200)
    thresholds: Thresholds
    mql_requires: list[str] = Field(default_factory=list, max_length=50)
    decay: Decay = Decay()
    notify_on: list[Stage] = Field(default_factory=lambda: list[Stage](["mql", "sal"]))
    sla: dict[Stage, float] = Field(default_factory=dict)
    routing: Routing = Routing()
    # Who hears of a missed follow-up (instead of the lead's owner), and whether the lead
    # then goes back to marketing.
    escalation_owner: str | None = Field(default=None, min_length=1, max_length=200)
    recycle_on_expiry: bool = False
    rules: list[Rule] = Field(max_length=MAX_RULES)
    # Per stage: traits that must be present (a dotted path) or conditions on traits that
    # must hold before a lead enters that stage; each stage's list adds to the ones below.
    requires: dict[RequirementStage, Annotated[list[Requirement], Field(max_length=50)]] = Field(
        default_factory=dict
    )
    excluded_when: list[Exclusion] = Field(default_factory=list, max_length=MAX_EXCLUSIONS)
    # Accounts and their buying committees; without it, accounts are not scored.
    accounts: AccountRules | None = None
    bots: Bots = Bots()
    # Named scores beside the default one (whose thresholds are `thresholds`).
    scores: dict[ScoreName, NamedScore] = Field(default_factory=dict, max_length=MAX_SCORES - 1)
    # The default score's grade bands.
    grades: Grades | None = None
    # Per stage, which scores move a lead there: `any` (the default: any score over its own
    # threshold), a score's name, or an expression such as `fleet or (warehouse and
    # default)` or `fleet >= 60 or warehouse > 30`.
    qualify: dict[RequirementStage, Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=dict
    )
    # The buyer journey's phases; without it, leads and accounts are not placed in one.
    journey: Journey | None = None

    @field_validator("sla", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        if isinstance(value, dict):
            durations = {}
            for stage, text in value.items():
                try:
                    durations[stage] = parse_duration(text)
                except ValueError as exc:
                    raise ValueError(f"sla.{stage}: {exc}") from None
            return durations
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSetDocument:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return self

    def model_scores(self) -> list[str]:
        """The named scores a model computes (no rule counts for them)."""
        return [name for name, score in self.scores.items() if score.model is not None]

    def _models_readable(self) -> None:
        """No rule counts for a model score, and each model reads only what this rule set
        defines; every problem located."""
        learned = set(self.model_scores())
        if not learned:
            return
        for index, rule in enumerate(self.rules):
            for name in set(rule.scores or ()) & learned:
                raise ValueError(
                    f"rules[{index}] ({rule.id}) counts for score {name!r}, a model score: "
                    "its value is learned, not counted"
                )
        for index, fit in enumerate(self.accounts.fit if self.accounts else ()):
            for name in set(fit.scores or ()) & learned:
                raise ValueError(
                    f"accounts.fit[{index}] ({fit.id}) counts for score {name!r}, a model score"
                )
        engagement = {r.id for r in self.rules if r.category == "engagement"}
        fit_rules = {r.id for r in self.rules if r.category == "fit"}
        phases = {p.id for p in self.journey.phases} if self.journey else set()
        problems = [
            f"scores.{name}.model.{problem}"
            for name in sorted(learned)
            for problem in self.scores[name].model.problems_against(  # type: ignore[union-attr]
                rules=engagement, fit_rules=fit_rules, phases=phases, accounts=bool(self.accounts)
            )
        ]
        if problems:
            raise ValueError("; ".join(problems[:10]))

    def score_names(self) -> list[str]:
        """The default score first, then the named ones as declared."""
        return [DEFAULT_SCORE, *self.scores]

    @model_validator(mode="after")
    def _known_scores(self) -> RuleSetDocument:
        names = self.score_names()
        if DEFAULT_SCORE in self.scores:
            raise ValueError(
                f"scores: {DEFAULT_SCORE!r} is the default score (its thresholds are "
                "`thresholds`, its grades `grades`); name the others"
            )
        for index, rule in enumerate(self.rules):
            for name in rule.scores or ():
                if name not in names:
                    raise ValueError(
                        f"rules[{index}] ({rule.id}) counts for score {name!r}, "
                        f"not declared in scores ({', '.join(names)})"
                    )
        for index, fit in enumerate(self.accounts.fit if self.accounts else ()):
            for name in fit.scores or ():
                if name not in names:
                    raise ValueError(
                        f"accounts.fit[{index}] ({fit.id}) counts for score {name!r}, "
                        f"not declared in scores ({', '.join(names)})"
                    )
        for name, score in self.scores.items():
            if score.queue is not None and score.queue not in self.routing.queues:
                raise ValueError(f"scores.{name}.queue is {score.queue!r}, not in routing.queues")
        self._models_readable()
        for stage, text in self.qualify.items():
            try:
                parse_qualification(text, names)
            except ValueError as exc:
                raise ValueError(f"qualify.{stage}: {exc}") from None
        return self


# -- qualification expressions -------------------------------------------------------------
#
# expression := term ("or" term)*;  term := factor ("and" factor)*
# factor := "(" expression ")" | "any" | score [(">" | ">=") number]
# A bare score holds when it reaches its own threshold for the stage; with a comparison,
# when its total passes the number. Parsed into tuples the engine compiles:
# ("or", parts) | ("and", parts) | ("score", name, op or None, number or None).

Qualification = tuple[Any, ...]
_TOKEN = re.compile(r"\s*(?:(\()|(\))|(>=|>)|(-?\d+(?:\.\d+)?)|([a-z][a-z0-9_]*)|(\S))")
MAX_QUALIFY_TERMS = 50


def parse_qualification(text: str, names: list[str]) -> Qualification:
    """Parse a qualification expression over the score `names`, or raise ValueError
    saying where it goes wrong."""
    if len(text) > MAX_QUALIFY_LENGTH:
        raise ValueError(f"longer than {MAX_QUALIFY_LENGTH} characters")
    tokens: list[tuple[str, str, int]] = []
    for match in _TOKEN.finditer(text):
        kinds = ("(", ")", "op", "number", "word", "bad")
        kind = next(k for k, group in zip(kinds, match.groups(), strict=True) if group)
        value = next(group for group in match.groups() if group)
        if kind == "bad":
            raise ValueError(f"unexpected {value!r} at character {match.start(6) + 1}")
        tokens.append((kind, value, match.start() + 1))
    if len(tokens) > 4 * MAX_QUALIFY_TERMS:
        raise ValueError(f"more than {MAX_QUALIFY_TERMS} terms")
    position = 0

    def peek() -> tuple[str, str, int] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, str, int]:
        nonlocal position
        token = peek()
        if token is None:
            raise ValueError("ends too early: a score name or '(' is missing")
        position += 1
        return token

    def expression(depth: int) -> Qualification:
        if depth > MAX_CONDITION_DEPTH:
            raise ValueError(f"parentheses nest deeper than {MAX_CONDITION_DEPTH}")
        parts = [term(depth)]
        while (token := peek()) is not None and token[:2] == ("word", "or"):
            take()
            parts.append(term(depth))
        return parts[0] if len(parts) == 1 else ("or", tuple(parts))

    def term(depth: int) -> Qualification:
        parts = [factor(depth)]
        while (token := peek()) is not None and token[:2] == ("word", "and"):
            take()
            parts.append(factor(depth))
        return parts[0] if len(parts) == 1 else ("and", tuple(parts))

    def factor(depth: int) -> Qualification:
        kind, value, at = take()
        if kind == "(":
            inner = expression(depth + 1)
            if take()[0] != ")":
                raise ValueError(f"'(' at character {at} is not closed")
            return inner
        if kind == "word" and value == "any":
            return ("or", tuple(("score", name, None, None) for name in names))
        if kind != "word" or value in ("and", "or"):
            raise ValueError(f"expected a score name at character {at}, not {value!r}")
        if value not in names:
            raise ValueError(f"{value!r} (character {at}) is not a score: {', '.join(names)}")
        following = peek()
        if following is not None and following[0] == "op":
            op = take()[1]
            number_kind, number, number_at = take()
            if number_kind != "number":
                raise ValueError(f"expected a number at character {number_at}")
            if abs(float(number)) > MAX_SCORE_VALUE:
                raise ValueError(
                    f"{number[:20]} (character {number_at}) is beyond the limit of "
                    f"{MAX_SCORE_VALUE:,.0f}"
                )
            return ("score", value, op, float(number))
        return ("score", value, None, None)

    parsed = expression(0)
    if (left := peek()) is not None:
        raise ValueError(f"unexpected {left[1]!r} at character {left[2]}")
    return parsed
