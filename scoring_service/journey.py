"""The buyer journey (docs/concepts/journey.md): where a lead and its account stand in the
seven steps from out of market to loyalty, which channel each event came from, and what
leads did in a phase before they moved on. Pure: no I/O.

A phase is entered on evidence: an event one of its rules matches moves the lead forward to
the furthest phase the event is evidence of (phases can be skipped: a first visit can be a
demo request). A lead that shows no evidence of its phase, or of a later one, for the
phase's quiet time falls back (to the phase before, unless the phase names another). The
fall-back happens at the moment the quiet time ran out, in event time: it is applied when
the lead's next event arrives (or a sweep asks), and is the same move either way, so a
replay of the same events gives the same journey.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from schemas.rule_set import Journey, Rule, When
from scoring_service.intake import Event
from scoring_service.rules import (
    NAME_ONLY,
    PATH_ONLY,
    CompiledRule,
    Condition,
    compile_condition,
    compile_rule,
    index_keys,
    indexed,
)
from scoring_service.state import Account, JourneyState
from stage_router import records

DIRECT: Final = "direct"
# Distinct content items a phase remembers per lead (the latest), and their length.
MAX_SEEN: Final = 20
MAX_CONTENT: Final = 200
_EMPTY: dict[str, Any] = {}

# Page paths and campaign values repeat across a site's visitors: what the phase rules and
# the channel rules made of one is remembered (up to MEMO entries of short values each,
# forgotten all at once when full), which keeps placing an event in the journey a dict
# lookup for most events.
MEMO: Final = 4096
MEMO_TEXT: Final = 200
# Channels are remembered by the context fields the channel rules read (each a part and a
# field in it: campaign.medium, page.referrer), when they read nothing else; fewer entries
# than paths, since a key holds whole values (each within intake's limits).
CHANNEL_MEMO: Final = 1024


@dataclass(frozen=True, slots=True)
class PhaseRule:
    id: str
    phase: int
    matcher: CompiledRule
    stages: frozenset[str] | None
    min_score: float | None
    # Tests a page path alone, or a track event's name alone (the index checked it).
    path_only: bool
    name_only: bool

    def holds(
        self,
        event: Event,
        traits: Mapping[str, Any],
        account_traits: Mapping[str, Any] | None,
        stage: str,
        score: float,
    ) -> bool:
        """The event's type was checked by the index; the rest of the rule here."""
        if self.stages is not None and stage not in self.stages:
            return False
        if self.min_score is not None and score < self.min_score:
            return False
        return self.matcher.matches_behaviour(event, traits, account_traits)


@dataclass(frozen=True, slots=True)
class JourneyBook:
    """A rule set's journey, compiled: phases by index, rules indexed like scoring's."""

    phases: tuple[str, ...]
    names: tuple[str, ...]
    # dicts, not Mappings: the compiled core takes the fast path for a dict.
    index: dict[str, int]
    # Per phase: seconds of quiet before it falls back (0: never), and to which phase.
    quiet: tuple[float, ...]
    fallback: tuple[int, ...]
    by_type: dict[str, tuple[PhaseRule, ...]]
    by_track_name: dict[str, tuple[PhaseRule, ...]]
    # The rules that test a page's path alone, tried through `page_rules`.
    path_rules: tuple[PhaseRule, ...]
    channels: tuple[tuple[str, Condition], ...]
    # The (part, field) pairs of the context the channel rules read; empty when they read
    # anything else too (then nothing is remembered).
    channel_fields: tuple[tuple[str, str], ...]
    account_at_least: int
    account_by_roles: bool
    path_memo: dict[str, tuple[PhaseRule, ...]]
    channel_memo: dict[tuple[Any, ...], str]

    def candidates(self, event_type: str, event_name: str | None) -> tuple[PhaseRule, ...]:
        return indexed(self.by_type, self.by_track_name, event_type, event_name)

    def page_rules(self, path: str) -> tuple[PhaseRule, ...]:
        """The path-only rules a page path matches."""
        memo = self.path_memo
        found = memo.get(path)
        if found is None:
            found = tuple(r for r in self.path_rules if r.matcher.path_matches(path))  # type: ignore[misc]
            if len(path) <= MEMO_TEXT:
                if len(memo) >= MEMO:
                    memo.clear()
                memo[path] = found
        return found

    def rank(self, phase: str | None) -> int:
        """A phase's place (0 is the first); -1 for none, or one this journey lacks."""
        if phase is None:
            return -1
        return self.index.get(phase, -1)


def compile_journey(spec: Journey) -> JourneyBook:
    ids = [phase.id for phase in spec.phases]
    by_type: dict[str, list[PhaseRule]] = {}
    by_name: dict[str, list[PhaseRule]] = {}
    path_rules: list[PhaseRule] = []
    for number, phase in enumerate(spec.phases):
        for rule in phase.entered_by:
            matcher = compile_rule(
                Rule(
                    id=rule.id,
                    category="engagement",
                    when=rule.when,
                    points=0,  # a phase's signal moves the journey, not the score
                    description=rule.description,
                )
            )
            plain = not rule.stages and rule.min_score is None
            types, names = index_keys(rule.when, matcher)
            compiled = PhaseRule(
                id=rule.id,
                phase=number,
                matcher=matcher,
                stages=frozenset(rule.stages) if rule.stages else None,
                min_score=rule.min_score,
                path_only=plain and matcher.shape == PATH_ONLY and types == ["page"],
                name_only=plain and matcher.shape == NAME_ONLY and not types,
            )
            if compiled.path_only:
                path_rules.append(compiled)
                continue
            for name in names:
                by_name.setdefault(name, []).append(compiled)
            for event_type in types:
                by_type.setdefault(event_type, []).append(compiled)
    fallback = []
    for number, phase in enumerate(spec.phases):
        if phase.falls_back_to is not None:
            fallback.append(ids.index(phase.falls_back_to))
        else:
            fallback.append(number - 1)
    return JourneyBook(
        phases=tuple(ids),
        names=tuple(phase.name or phase.id.replace("_", " ") for phase in spec.phases),
        index={phase_id: number for number, phase_id in enumerate(ids)},
        quiet=tuple(phase.quiet or 0.0 for phase in spec.phases),
        fallback=tuple(fallback),
        by_type={key: tuple(rules) for key, rules in by_type.items()},
        by_track_name={key: tuple(rules) for key, rules in by_name.items()},
        path_rules=tuple(path_rules),
        channels=tuple((c.id, compile_condition(c.when)) for c in spec.channels),
        channel_fields=_channel_fields(spec),
        account_at_least=spec.accounts.at_least,
        account_by_roles=spec.accounts.count == "roles",
        path_memo={},
        channel_memo={},
    )


def _channel_fields(spec: Journey) -> tuple[tuple[str, str], ...]:
    """The (part, field) pairs the channel rules read, in a fixed order; () when a rule
    reads anything but two-level context fields and the event's type."""
    fields: set[tuple[str, str]] = set()

    def collect(when: When) -> bool:
        if when.event is not None or when.path is not None or when.trait is not None:
            return False
        if when.property_conditions():
            return False
        for key in when.context_conditions():
            parts = key.split(".")
            if len(parts) != 2:
                return False
            fields.add((parts[0], parts[1]))
        nested = [*(when.all_ or ()), *(when.any_ or ()), *((when.not_,) if when.not_ else ())]
        return all(collect(part) for part in nested)

    if not all(collect(channel.when) for channel in spec.channels):
        return ()
    return tuple(sorted(fields))


def _channel_key(
    book: JourneyBook, event: Event, context: dict[str, Any]
) -> tuple[Any, ...] | None:
    """The event's type and the context fields the channel rules read, as a memo key;
    None when one is not text (a number, a list: judged afresh)."""
    values: list[Any] = [event.type]
    for outer, inner in book.channel_fields:
        part = context.get(outer)
        if part is None:
            values.append(None)
            continue
        if not isinstance(part, dict):
            return None
        fields: dict[str, Any] = part
        value = fields.get(inner)
        if value is not None and not isinstance(value, str):
            return None
        values.append(value)
    return tuple(values)


def channel_of(book: JourneyBook, event: Event) -> str:
    """The channel an event came from: the first channel rule that holds on it, `direct`
    when none does (and, at once, when the event carries no campaign or referrer)."""
    context = event.context
    if not context:
        return DIRECT
    page = context.get("page")
    if (
        "campaign" not in context
        and "referrer" not in context
        and not (isinstance(page, dict) and page.get("referrer"))
    ):
        return DIRECT
    key = _channel_key(book, event, context) if book.channel_fields else None
    if key is not None:
        known = book.channel_memo.get(key)
        if known is not None:
            return known
    found = DIRECT
    for channel, holds in book.channels:
        if holds(event, _EMPTY, None):
            found = channel
            break
    if key is not None:
        memo = book.channel_memo
        if len(memo) >= CHANNEL_MEMO:
            memo.clear()
        memo[key] = found
    return found


def content_of(event: Event) -> str | None:
    """What an event shows of the content a lead consumed: a page's path, a track event's
    name (case-folded, as rules read them); None for identify and group calls."""
    kind = event.type
    if kind == "page":
        text = event.path
    elif kind == "track":
        text = event.event_name
    else:
        return None
    if not text:
        return None
    return text if len(text) <= MAX_CONTENT else text[:MAX_CONTENT]


def _remember(journey: JourneyState, content: str) -> None:
    seen = journey.seen
    if seen and seen[-1] == content:
        return
    if content in seen:
        seen.remove(content)
    elif len(seen) >= MAX_SEEN:
        del seen[0]
    seen.append(content)


def _enter(journey: JourneyState, phase: str | None, at: float) -> None:
    journey.phase = phase
    journey.since = at
    journey.evidence_at = at
    journey.seen = []
    journey.seq += 1


def fall_back(
    book: JourneyBook,
    journey: JourneyState,
    until: float,
    moves: list[records.JourneyMoveDoc],
    *,
    lead_id: str,
    ruleset_version: int,
) -> bool:
    """Apply every fall-back whose quiet time ran out by `until`, each at the moment it ran
    out; returns whether the phase changed."""
    changed = False
    for _ in range(len(book.phases)):
        rank = book.rank(journey.phase)
        if rank < 0:
            break
        quiet = book.quiet[rank]
        target = book.fallback[rank]
        if quiet <= 0 or target < 0:
            break
        last = journey.evidence_at if journey.evidence_at is not None else journey.since
        due = (last or 0.0) + quiet
        if due > until:
            break
        seen = journey.seen
        left = journey.phase
        _enter(journey, book.phases[target], due)
        moves.append(
            records.journey_move_record(
                subject="lead",
                subject_id=lead_id,
                seq=journey.seq,
                from_phase=left,
                to_phase=book.phases[target],
                reason="quiet",
                occurred_at=due,
                ruleset_version=ruleset_version,
                seen=seen,
            )
        )
        changed = True
    return changed


def advance(
    book: JourneyBook,
    journey: JourneyState,
    event: Event,
    moves: list[records.JourneyMoveDoc],
    *,
    lead_id: str,
    traits: Mapping[str, Any],
    account_traits: Mapping[str, Any] | None,
    stage: str,
    score: float,
    ruleset_version: int,
) -> bool:
    """Place one event in the lead's journey: the channel touch, a fall-back that ran out
    before it, a move forward when it is evidence of a later phase, and the content seen.
    Returns whether the phase changed."""
    ts = event.ts
    changed = False
    rank = book.rank(journey.phase)
    # Most events come well within the phase's quiet time: checked here before the call.
    quiet = book.quiet[rank] if rank >= 0 else 0.0
    last_evidence = journey.evidence_at if journey.evidence_at is not None else journey.since
    if quiet > 0 and (last_evidence or 0.0) + quiet <= ts:
        changed = fall_back(
            book, journey, ts, moves, lead_id=lead_id, ruleset_version=ruleset_version
        )
    channel = channel_of(book, event)
    first = journey.first_touch
    if first is None or ts < first[1]:
        journey.first_touch = [channel, ts]
    last = journey.last_touch
    # The last touch is the latest that came from somewhere: a direct visit after a
    # campaign click does not erase the campaign.
    if last is None or (ts >= last[1] and (channel != DIRECT or last[0] == DIRECT)):
        if last is None:
            journey.last_touch = [channel, ts]
        else:  # in place: most events touch the last touch
            last[0] = channel
            last[1] = ts
    current = book.rank(journey.phase)
    best: PhaseRule | None = None
    evidence = False
    candidates = book.candidates(event.type, event.event_name)
    path = event.path
    if event.type == "page" and path is not None and book.path_rules:
        matched = book.page_rules(path)
        if matched:
            candidates = matched + candidates if candidates else matched
    for rule in candidates:
        phase = rule.phase
        if phase < current or (best is not None and phase <= best.phase):
            continue
        if phase == current and evidence:
            continue
        # Path-only rules come matched already, name-only ones through the name index.
        if not (rule.path_only or rule.name_only) and not rule.holds(
            event, traits, account_traits, stage, score
        ):
            continue
        if phase == current:
            evidence = True
        else:
            best = rule
    content = content_of(event)
    if best is not None:
        seen = journey.seen
        left = journey.phase
        entered = book.phases[best.phase]
        _enter(journey, entered, ts)
        journey.entered_via[entered] = channel
        moves.append(
            records.journey_move_record(
                subject="lead",
                subject_id=lead_id,
                seq=journey.seq,
                from_phase=left,
                to_phase=entered,
                reason="evidence",
                rule_id=best.id,
                caused_by=event.message_id,
                content=content,
                channel=channel,
                occurred_at=ts,
                ruleset_version=ruleset_version,
                seen=seen,
            )
        )
        return True
    if evidence and (journey.evidence_at is None or ts > journey.evidence_at):
        journey.evidence_at = ts
    if content is not None and current >= 0:
        _remember(journey, content)
    return changed


def merge(
    book: JourneyBook,
    target: JourneyState | None,
    source: JourneyState,
    moves: list[records.JourneyMoveDoc],
    *,
    lead_id: str,
    at: float,
    caused_by: str | None,
    ruleset_version: int,
) -> JourneyState:
    """An anonymous visitor's journey joins the identified lead's: the further phase, the
    earlier first touch, the later last touch."""
    if target is None:
        target = JourneyState()
    first, other_first = target.first_touch, source.first_touch
    if other_first is not None and (first is None or other_first[1] < first[1]):
        target.first_touch = list(other_first)
    last, other_last = target.last_touch, source.last_touch
    if other_last is not None and (last is None or other_last[1] > last[1]):
        target.last_touch = list(other_last)
    for phase, channel in source.entered_via.items():
        target.entered_via.setdefault(phase, channel)
    if book.rank(source.phase) > book.rank(target.phase):
        left = target.phase
        seq = target.seq
        target.phase, target.since = source.phase, source.since
        target.evidence_at, target.seen = source.evidence_at, list(source.seen)
        target.seq = seq + 1
        moves.append(
            records.journey_move_record(
                subject="lead",
                subject_id=lead_id,
                seq=target.seq,
                from_phase=left,
                to_phase=source.phase,
                reason="merge",
                caused_by=caused_by,
                occurred_at=at,
                ruleset_version=ruleset_version,
            )
        )
    return target


def account_phase(book: JourneyBook, account: Account) -> int:
    """The furthest phase that at least `at_least` members reached (each committee role
    counted once when the journey counts roles; members without a role then do not
    count); -1 when none did."""
    counted: dict[str, int] = {}
    roles = book.account_by_roles
    for lead_id, rank in account.member_phases.items():
        if roles:
            member = account.members.get(lead_id)
            key = member[2] if member is not None else None
            if key is None:
                continue
        else:
            key = lead_id
        if rank > counted.get(key, -1):
            counted[key] = rank
    ranks: Sequence[int] = sorted(counted.values(), reverse=True)
    need = book.account_at_least
    return ranks[need - 1] if len(ranks) >= need else -1


def follow_members(
    book: JourneyBook,
    account: Account,
    lead_id: str | None,
    rank: int,
    moves: list[records.JourneyMoveDoc],
    *,
    at: float,
    caused_by: str | None,
    ruleset_version: int,
) -> bool:
    """A member's event (or, with `lead_id` None, a member leaving): the account's phase
    follows its members. Judged afresh every time, from every member's latest phase and
    role, so that where an account ends does not depend on the order its members' events
    arrived in across partitions. Returns whether the account's phase changed (to none,
    too, when no longer enough members reached any phase)."""
    if lead_id is not None:
        if rank < 0:
            account.member_phases.pop(lead_id, None)
        else:
            account.member_phases[lead_id] = rank
    placed = account_phase(book, account)
    journey = account.journey
    current = book.rank(journey.phase) if journey is not None else -1
    if placed == current:
        return False
    if journey is None:
        journey = account.journey = JourneyState()
    left = journey.phase
    entered = book.phases[placed] if placed >= 0 else None
    _enter(journey, entered, at)
    moves.append(
        records.journey_move_record(
            subject="account",
            subject_id=account.account_id,
            seq=journey.seq,
            from_phase=left,
            to_phase=entered,
            reason="members",
            caused_by=caused_by,
            occurred_at=at,
            ruleset_version=ruleset_version,
        )
    )
    return True
