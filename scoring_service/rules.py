"""Compiling a rule-set document into fast matchers. Pure: no I/O.

Conditions are data: string comparisons and `*`-only globs, matched segment by segment
(each segment found left to right), so matching time is linear in the input and a
published pattern can never be made to backtrack.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, TypeVar

from schemas.rule_set import (
    DEFAULT_SCORE,
    CommitteeRole,
    Journey,
    Operators,
    Rule,
    RuleSetDocument,
    When,
)
from schemas.timefmt import DAY
from scoring_service.intake import Event
from scoring_service.scores import ScoreBook, compile_scores

Predicate = Callable[[Any], bool]
# What a behavioural rule tests, when it is a single thing (the common case).
PATH_ONLY: Final = "path"
NAME_ONLY: Final = "name"
MIXED: Final = "mixed"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def words(text: str) -> str:
    """Text as its words, case- and accent-folded, each between single spaces:
    "Vice-Président, Sales" -> " vice president sales ". A phrase in words() form is then a
    whole-word match exactly when it is a substring: one linear scan, no backtracking."""
    # Titles and industries repeat across leads and rules: short ones are remembered (the
    # cache is bounded in entries, and so in memory by the length limit).
    if len(text) <= _REMEMBERED_TEXT:
        return _remembered_words(text)
    return _words(text)


_REMEMBERED_TEXT = 200


@lru_cache(maxsize=8192)
def _remembered_words(text: str) -> str:
    return _words(text)


def _words(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(
        " " if not ch.isalnum() else ch for ch in folded if not unicodedata.combining(ch)
    )
    return " " + " ".join(plain.split()) + " "


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _each(test: Predicate) -> Predicate:
    """A list-valued trait (tags, say) matches when any of its items does."""

    def check(value: Any) -> bool:
        if isinstance(value, list):
            return any(test(item) for item in value)
        return value is not None and test(value)

    return check


def compile_operators(ops: Operators) -> Predicate:
    """All operators that are set must hold; text compares case-insensitively."""
    tests: list[Predicate] = []
    if ops.equals is not None:
        expected = _fold(ops.equals)
        tests.append(_each(lambda v: _fold(v) == expected))
    if ops.in_ is not None:
        allowed = frozenset(_fold(item) for item in ops.in_)
        # Only scalars can be members: a trait sent as an object must not match (or raise).
        tests.append(_each(lambda v: isinstance(v, str | int | float) and _fold(v) in allowed))
    if ops.contains_any is not None:
        needles = tuple(n.casefold() for n in ops.contains_any)
        tests.append(
            _each(lambda v: isinstance(v, str) and any(n in v.casefold() for n in needles))
        )
    if ops.words_any is not None:
        phrases = tuple(words(p) for p in ops.words_any)

        def has_phrase(value: Any) -> bool:
            if not isinstance(value, str):
                return False
            text = words(value)
            return any(phrase in text for phrase in phrases)

        tests.append(_each(has_phrase))
    if ops.starts_with_any is not None:
        prefixes = tuple(p.casefold() for p in ops.starts_with_any)
        tests.append(_each(lambda v: isinstance(v, str) and v.casefold().startswith(prefixes)))
    if ops.ends_with_any is not None:
        suffixes = tuple(s.casefold() for s in ops.ends_with_any)
        tests.append(_each(lambda v: isinstance(v, str) and v.casefold().endswith(suffixes)))
    if ops.between is not None:
        low, high = ops.between
        tests.append(_each(lambda v: (n := _number(v)) is not None and low <= n <= high))
    if ops.gte is not None:
        floor = ops.gte
        tests.append(_each(lambda v: (n := _number(v)) is not None and n >= floor))
    if ops.lte is not None:
        ceiling = ops.lte
        tests.append(_each(lambda v: (n := _number(v)) is not None and n <= ceiling))
    exists = ops.exists
    if exists is not None:
        return lambda v: (v is not None and v != "") == exists and all(t(v) for t in tests)
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(t(v) for t in tests)


def compile_value_condition(condition: Any) -> Predicate:
    """properties.<key>: a scalar means equals, a list means in, an object holds operators."""
    if isinstance(condition, dict):
        return compile_operators(Operators.model_validate(condition))
    if isinstance(condition, list):
        return compile_operators(Operators.model_validate({"in": condition}))
    return compile_operators(Operators.model_validate({"equals": condition}))


class Glob:
    """A case-insensitive glob where `*` matches any run of characters."""

    __slots__ = ("_exact", "_first", "_last", "_middle", "_min_length", "prefix")

    def __init__(self, pattern: str) -> None:
        parts = pattern.casefold().split("*")
        self._exact = parts[0] if len(parts) == 1 else None
        self._first = parts[0]
        self._last = parts[-1] if len(parts) > 1 else ""
        self._middle = tuple(p for p in parts[1:-1] if p)
        self._min_length = sum(len(p) for p in parts)
        # "/pricing*", the common shape, is a plain prefix test.
        self.prefix = parts[0] if len(parts) == 2 and not parts[1] else None

    def matches(self, text: str) -> bool:
        """`text` must already be case-folded."""
        if self._exact is not None:
            return text == self._exact
        if len(text) < self._min_length:
            return False
        if not (text.startswith(self._first) and text.endswith(self._last)):
            return False
        position, end = len(self._first), len(text) - len(self._last)
        for part in self._middle:
            found = text.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
        return True


def path_test(globs: tuple[Glob, ...]) -> Callable[[str], bool]:
    """One test for a rule's globs; prefix-only globs become a single startswith."""
    prefixes = tuple(g.prefix for g in globs if g.prefix is not None)
    if len(prefixes) == len(globs):
        return lambda path: path.startswith(prefixes)
    if len(globs) == 1:
        return globs[0].matches
    return lambda path: any(g.matches(path) for g in globs)


def lookup(data: Mapping[str, Any] | None, dotted: tuple[str, ...]) -> Any:
    """Follow a dotted path into nested objects; None when any step is missing."""
    value: Any = data
    for key in dotted:
        # dict, not Mapping: traits come from JSON, and the ABC check costs more than the get.
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


@dataclass(frozen=True, slots=True)
class TraitTest:
    """A condition on the lead's traits, or on its account's traits (`account.<key>`)."""

    on_account: bool
    path: tuple[str, ...]
    predicate: Predicate

    def holds(self, traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None) -> bool:
        source = account_traits if self.on_account else traits
        return self.predicate(lookup(source, self.path))


# A compiled condition: (the event, or None for a fit test; the lead's traits; the account's).
Condition = Callable[[Event | None, Mapping[str, Any], Mapping[str, Any] | None], bool]


def compile_condition(when: When) -> Condition:
    """Every part of `when` must hold; all / any / not nest. Each part reads the event (type,
    event name, path, properties, context), the lead's traits or the account's traits."""
    tests: list[Condition] = []
    if when.type is not None:
        event_type = when.type
        tests.append(lambda e, t, a: e is not None and e.type == event_type)
    if when.event is not None:
        names = frozenset(
            n.casefold() for n in ([when.event] if isinstance(when.event, str) else when.event)
        )
        tests.append(lambda e, t, a: e is not None and e.event_name in names)
    if when.path is not None:
        patterns = [when.path] if isinstance(when.path, str) else when.path
        path_ok = path_test(tuple(Glob(p) for p in patterns))
        tests.append(lambda e, t, a: e is not None and e.path is not None and path_ok(e.path))
    for key, cond in when.property_conditions().items():
        tests.append(
            _event_part("properties", tuple(key.split(".")), compile_value_condition(cond))
        )
    for key, cond in when.context_conditions().items():
        tests.append(_event_part("context", tuple(key.split(".")), compile_value_condition(cond)))
    if when.trait is not None:
        trait = _trait_test(when)
        tests.append(lambda e, t, a: trait.holds(t, a))
    if when.all_ is not None:
        tests.append(_all_of(tuple(compile_condition(c) for c in when.all_)))
    if when.any_ is not None:
        tests.append(_any_of(tuple(compile_condition(c) for c in when.any_)))
    if when.not_ is not None:
        negated = compile_condition(when.not_)
        tests.append(lambda e, t, a: not negated(e, t, a))
    return _all_of(tuple(tests))


# Combinators of one or two conditions, the usual shapes, skip the generator `all` and `any`
# need: a fit rule's conditions are judged on every change of traits.
def _all_of(checks: tuple[Condition, ...]) -> Condition:
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda e, t, a: first(e, t, a) and second(e, t, a)
    return lambda e, t, a: all(c(e, t, a) for c in checks)


def _any_of(checks: tuple[Condition, ...]) -> Condition:
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda e, t, a: first(e, t, a) or second(e, t, a)
    return lambda e, t, a: any(c(e, t, a) for c in checks)


def _event_part(part: str, path: tuple[str, ...], predicate: Predicate) -> Condition:
    """A condition on the event's properties or context (nothing holds without an event)."""
    if part == "properties":
        return lambda e, t, a: e is not None and predicate(lookup(e.properties, path))
    return lambda e, t, a: e is not None and predicate(lookup(e.context, path))


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    category: str
    points: float
    promote_to: str | None
    disqualify: bool
    limit_count: int
    limit_window: float  # seconds; 0 when the rule has no limit
    description: str
    events: frozenset[str] | None
    path_matches: Callable[[str], bool] | None
    properties: tuple[tuple[tuple[str, ...], Predicate], ...]
    trait: TraitTest | None
    shape: str = MIXED
    # Conditions beyond the common ones above (context, all / any / not), checked last.
    extra: Condition | None = None
    # Whether the rule counts for the default score (the running sum on the lead), and the
    # named scores it counts for (their running sums, LeadState.engagement_by).
    for_default: bool = True
    named: tuple[str, ...] = ()

    def matches_behaviour(
        self,
        event: Event,
        traits: Mapping[str, Any],
        account_traits: Mapping[str, Any] | None,
    ) -> bool:
        """Type has been checked by the index; the rest of the `when` is checked here."""
        if self.events is not None and event.event_name not in self.events:
            return False
        path = event.path
        if self.path_matches is not None and (path is None or not self.path_matches(path)):
            return False
        properties = event.properties or {}
        for key, predicate in self.properties:
            if not predicate(lookup(properties, key)):
                return False
        if self.trait is not None and not self.trait.holds(traits, account_traits):
            return False
        return self.extra is None or self.extra(event, traits, account_traits)

    def fit_holds(
        self, traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None
    ) -> bool:
        """A fit rule's conditions, on the lead's and its account's traits."""
        if self.trait is not None and not self.trait.holds(traits, account_traits):
            return False
        return self.extra is None or self.extra(None, traits, account_traits)


def _trait_test(when: When) -> TraitTest:
    """The trait condition of a `when` (operators beside `trait`), compiled."""
    assert when.trait is not None
    ops = Operators.model_validate(
        {
            name: getattr(when, name)
            for name in Operators.model_fields
            if getattr(when, name) is not None
        }
    )
    on_account = when.trait.startswith("account.")
    path = when.trait[len("account.") :] if on_account else when.trait
    return TraitTest(on_account, tuple(path.split(".")), compile_operators(ops))


def compile_rule(rule: Rule) -> CompiledRule:
    when = rule.when
    events = None
    if when.event is not None:
        names = [when.event] if isinstance(when.event, str) else when.event
        events = frozenset(n.casefold() for n in names)
    globs = None
    if when.path is not None:
        patterns = [when.path] if isinstance(when.path, str) else when.path
        globs = tuple(Glob(p) for p in patterns)
    trait = _trait_test(when) if when.trait is not None else None
    properties = tuple(
        (tuple(key.split(".")), compile_value_condition(cond))
        for key, cond in when.property_conditions().items()
    )
    extra = _extra_condition(when)
    simple = not properties and trait is None and extra is None
    only_path = globs is not None and events is None and simple
    only_name = events is not None and globs is None and simple
    return CompiledRule(
        shape=PATH_ONLY if only_path else NAME_ONLY if only_name else MIXED,
        id=rule.id,
        category=rule.category,
        points=rule.points,
        promote_to=rule.promote_to,
        disqualify=rule.disqualify,
        limit_count=rule.limit.count if rule.limit else 0,
        limit_window=rule.limit.window_days * DAY if rule.limit else 0.0,
        description=rule.description or rule.id,
        events=events,
        path_matches=path_test(globs) if globs is not None else None,
        properties=properties,
        trait=trait,
        extra=extra,
        for_default=rule.scores is None or DEFAULT_SCORE in rule.scores,
        named=tuple(name for name in rule.scores or () if name != DEFAULT_SCORE),
    )


def _extra_condition(when: When) -> Condition | None:
    """The parts of a rule's `when` that the common fields do not cover: context conditions
    and all / any / not. None when there are none (the fast path)."""
    context = when.context_conditions()
    if not context and not when.combines():
        return None
    rest = {
        key: value
        for key, value in when.model_dump(by_alias=True, exclude_none=True).items()
        if key.startswith("context.") or key in ("all", "any", "not")
    }
    return compile_condition(When.model_validate(rest))


@dataclass(frozen=True, slots=True)
class CompiledRole:
    id: str
    name: str
    holds: Condition  # on (None, the person's traits, the account's traits)
    points: float


@dataclass(frozen=True, slots=True)
class CompiledAccountFit:
    id: str
    description: str
    points: float
    holds: Condition  # on (None, the account's traits, the account's traits)
    scores: tuple[str, ...] = (DEFAULT_SCORE,)


@dataclass(frozen=True, slots=True)
class CompiledAccountRules:
    """The `accounts` part of a rule set, ready for scoring accounts."""

    roles: tuple[CompiledRole, ...]
    role_ids: frozenset[str]
    fit: tuple[CompiledAccountFit, ...]
    top_members: int
    member_cap: float
    only_roles_count: bool
    window: float  # seconds
    min_engagement: float
    required: tuple[str, ...]
    engaged_threshold: float
    mqa_threshold: float
    owner_trait: tuple[str, ...]


def _roles(document: RuleSetDocument) -> list[CommitteeRole]:
    return document.accounts.roles if document.accounts is not None else []


def _compile_accounts(document: RuleSetDocument) -> CompiledAccountRules | None:
    spec = document.accounts
    if spec is None:
        return None
    return CompiledAccountRules(
        roles=tuple(
            CompiledRole(
                r.id, r.name or r.id.replace("_", " "), compile_condition(r.when), r.points
            )
            for r in spec.roles
        ),
        role_ids=frozenset(r.id for r in spec.roles),
        fit=tuple(
            CompiledAccountFit(
                f.id,
                f.description or f.id,
                f.points,
                compile_condition(f.when),
                tuple(f.scores or (DEFAULT_SCORE,)),
            )
            for f in spec.fit
        ),
        top_members=spec.rollup.top_members,
        member_cap=spec.rollup.member_cap,
        only_roles_count=spec.rollup.members == "with_role",
        window=spec.coverage.window_days * DAY,
        min_engagement=spec.coverage.min_engagement,
        required=tuple(spec.coverage.required),
        engaged_threshold=spec.thresholds.engaged,
        mqa_threshold=spec.thresholds.mqa,
        owner_trait=tuple(spec.owner_trait.split(".")),
    )


@dataclass(frozen=True, slots=True)
class CompiledRuleSet:
    """A rule set ready for scoring, with behavioural rules indexed by event type and name."""

    version: int
    name: str
    mql_threshold: float
    sal_threshold: float
    mql_requires: tuple[tuple[str, ...], ...]
    # Per stage (mql, sal, sql): (what is required, the test), cumulative upwards.
    requirements: Mapping[str, tuple[tuple[str, Condition], ...]]
    # (exclusion id, the test): any that holds keeps a lead out of mql and beyond.
    exclusions: tuple[tuple[str, Condition], ...]
    sql_threshold: float | None
    half_life: float  # seconds; 0 means no decay
    notify_on: frozenset[str]
    sla: Mapping[str, float]
    default_queue: str
    queues: Mapping[str, tuple[str, ...]]
    routes: tuple[tuple[str, TraitTest], ...]
    escalation_owner: str | None
    recycle_on_expiry: bool
    fit_rules: tuple[CompiledRule, ...]
    fit_disqualifiers: frozenset[str]
    # Whether anything judged on traits (fit rules, requirements, exclusions) reads account
    # traits; else account changes never touch a lead's fit or what it is allowed.
    fit_reads_account: bool
    by_id: Mapping[str, CompiledRule]
    # The scores (the default one and any named), and which stage each qualifies for.
    book: ScoreBook
    # Matches a crawler's user agent (case-folded), None when the filter is off.
    bot_agents: re.Pattern[str] | None
    # Behavioural rules that apply to every event of a type, and track rules by event name.
    by_type: Mapping[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    by_track_name: Mapping[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    accounts: CompiledAccountRules | None = None
    # The buyer journey as published (the engine compiles it: scoring_service/journey.py).
    journey: Journey | None = None

    def candidates(self, event_type: str, event_name: str | None) -> tuple[CompiledRule, ...]:
        return indexed(self.by_type, self.by_track_name, event_type, event_name)

    def queue_for(self, traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None) -> str:
        """The queue a lead goes to: the first routing rule that matches, else the default."""
        for queue, test in self.routes:
            if test.holds(traits, account_traits):
                return queue
        return self.default_queue

    def is_bot(self, event: Event) -> bool:
        """Was the event sent by a crawler the rule set names?"""
        agent = event.user_agent
        return (
            agent is not None
            and self.bot_agents is not None
            and self.bot_agents.search(agent.casefold()) is not None
        )

    def decay_factor(self, elapsed: float) -> float:
        """How much engagement earned `elapsed` seconds ago is worth now."""
        if self.half_life <= 0 or elapsed <= 0:
            return 1.0
        return float(0.5 ** (elapsed / self.half_life))


def _present(path: tuple[str, ...]) -> Condition:
    def present(e: Event | None, t: Mapping[str, Any], a: Mapping[str, Any] | None) -> bool:
        value = lookup(t, path)
        return value is not None and value != ""

    return present


def _requirements(document: RuleSetDocument) -> dict[str, tuple[tuple[str, Condition], ...]]:
    """Each stage's requirements, with `mql_requires` (the older spelling) among mql's."""
    result: dict[str, tuple[tuple[str, Condition], ...]] = {}
    for stage in ("mql", "sal", "sql"):
        listed: list[str | When] = list(document.requires.get(stage, []))
        if stage == "mql":
            listed = [*document.mql_requires, *listed]
        tests: list[tuple[str, Condition]] = []
        for index, item in enumerate(listed):
            if isinstance(item, str):
                tests.append((item, _present(tuple(item.split(".")))))
            else:
                tests.append((f"condition {index + 1}", compile_condition(item)))
        result[stage] = tuple(tests)
    return result


Indexed = TypeVar("Indexed")


def indexed(
    by_type: Mapping[str, tuple[Indexed, ...]],
    by_track_name: Mapping[str, tuple[Indexed, ...]],
    event_type: str,
    event_name: str | None,
) -> tuple[Indexed, ...]:
    """The rules to try on an event, from the index `index_keys` built: those of its type,
    and a track call's by its name."""
    generic = by_type.get(event_type, ())
    if event_type == "track" and event_name is not None:
        named = by_track_name.get(event_name)
        if named:
            return generic + named if generic else named
    return generic


def index_keys(when: When, rule: CompiledRule) -> tuple[list[str], list[str]]:
    """Where a behavioural rule is indexed: (the event types every event of which it
    must be tried on, the track event names it is tried on)."""
    declared = when.type
    if rule.events is not None:
        # A named event is a track call, whatever else the rule says.
        return [], sorted(rule.events) if declared in (None, "track") else []
    if rule.path_matches is not None and declared is None:
        return ["page"], []
    return ([declared] if declared else ["page", "track", "identify", "group"]), []


def compile_ruleset(document: RuleSetDocument, version: int) -> CompiledRuleSet:
    """Index a validated document for scoring."""
    compiled = [compile_rule(r) for r in document.rules]
    fit = tuple(r for r in compiled if r.category == "fit")
    by_type: dict[str, list[CompiledRule]] = {}
    by_name: dict[str, list[CompiledRule]] = {}
    for source, rule in zip(document.rules, compiled, strict=True):
        if rule.category != "engagement":
            continue
        types, names = index_keys(source.when, rule)
        for name in names:
            by_name.setdefault(name, []).append(rule)
        for event_type in types:
            by_type.setdefault(event_type, []).append(rule)
    return CompiledRuleSet(
        version=version,
        name=document.name,
        mql_threshold=document.thresholds.mql,
        sal_threshold=document.thresholds.sal,
        mql_requires=tuple(tuple(t.split(".")) for t in document.mql_requires),
        requirements=_requirements(document),
        exclusions=tuple((e.id, compile_condition(e.when)) for e in document.excluded_when),
        sql_threshold=document.thresholds.sql,
        half_life=document.decay.half_life_days * DAY,
        notify_on=frozenset(document.notify_on),
        sla={str(stage): seconds for stage, seconds in document.sla.items()},
        default_queue=document.routing.default_queue,
        queues={name: tuple(q.owners) for name, q in document.routing.queues.items()},
        routes=tuple((r.queue, _trait_test(r.when)) for r in document.routing.rules),
        escalation_owner=document.escalation_owner,
        recycle_on_expiry=document.recycle_on_expiry,
        fit_rules=fit,
        fit_disqualifiers=frozenset(r.id for r in fit if r.disqualify),
        fit_reads_account=any(
            source.when.reads_account() for source in document.rules if source.category == "fit"
        )
        or any(e.when.reads_account() for e in document.excluded_when)
        or any(
            isinstance(item, When) and item.reads_account()
            for items in document.requires.values()
            for item in items
        )
        # A committee role judged on the account's traits is refreshed with fit.
        or any(role.when.reads_account() for role in _roles(document)),
        by_id={r.id: r for r in compiled},
        by_type={k: tuple(v) for k, v in by_type.items()},
        by_track_name={k: tuple(v) for k, v in by_name.items()},
        accounts=_compile_accounts(document),
        journey=document.journey,
        book=compile_scores(document),
        # One pass over the agent for all names: literal alternatives, so linear in practice.
        bot_agents=(
            re.compile("|".join(re.escape(name.casefold()) for name in document.bots.user_agents))
            if document.bots.user_agents
            else None
        ),
    )
