"""Scoring accounts and their buying committees. Pure: no I/O.

An account's score has three parts (docs/concepts/accounts.md):

- fit: the account fit rules that hold on the account's traits;
- engagement: the roll-up of its members' engagement, the `top_members` largest each capped
  at `member_cap` (with `members: with_role`, only members holding a committee role count);
- coverage: the points of each committee role covered, a role being covered while a member
  holding it has at least `min_engagement` and was active within `window_days`.

Every member's engagement is kept on the account as of the member's own clock; the parts
are computed as of the account's clock (the latest member event time), so the score depends
on the members' states only, never on the order their events arrived in.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any, Final

from schemas.rule_set import DEFAULT_SCORE
from scoring_service.rules import CompiledAccountRules, CompiledRuleSet, lookup
from scoring_service.state import Account, LeadState
from stage_router import records
from stage_router.accounts import automatic_account_move
from stage_router.lifecycle import Move

# The trait a CRM sets to name a person's committee role; it overrides the role's conditions.
ROLE_TRAIT: Final = "committee_role"
NO_ROLE: Final = frozenset({"none", "no_role", ""})
# Members an account keeps track of. A bigger one (a million anonymous ids grouped into one
# account, say) keeps its most engaged members: beyond this, the least engaged is dropped.
MAX_MEMBERS: Final = 1000
# How an admin's adjustment shows among the parts of an account's engagement.
ADJUSTED_MEMBER: Final = "adjust:" + DEFAULT_SCORE


def _role_key(value: str) -> str:
    return "_".join(value.strip().casefold().replace("-", " ").split())


class AccountScorer:
    """Scores accounts for one rule set's `accounts` section."""

    def __init__(self, rules: CompiledRuleSet, spec: CompiledAccountRules) -> None:
        self.rules = rules
        self.spec = spec
        self.role_points = {role.id: role.points for role in spec.roles}
        self.role_order = [role.id for role in spec.roles]

    # -- people --------------------------------------------------------------------------

    def role_of(
        self, traits: Mapping[str, Any], account_traits: Mapping[str, Any] | None
    ) -> str | None:
        """A person's committee role: the CRM's word when it names a role, else the first
        role whose conditions hold."""
        told = traits.get(ROLE_TRAIT)
        if isinstance(told, str):
            key = _role_key(told)
            if key in self.spec.role_ids:
                return key
            if key in NO_ROLE:
                return None
        for role in self.spec.roles:
            if role.holds(None, traits, account_traits):
                return role.id
        return None

    def sync(
        self, account: Account, state: LeadState, named: Mapping[str, float] | None = None
    ) -> None:
        """Mirror a member's engagement (and its `named` scores' engagement), clock and role
        on its account, and rescore it."""
        clock = state.as_of
        if clock is None:
            return
        entry = (state.engagement, clock, state.committee_role)
        if (
            account.members.get(state.lead_id) == entry
            and account.fit_key == self._fit_key(account)
            and (named is None or account.members_by.get(state.lead_id) == named)
        ):
            return
        account.members[state.lead_id] = entry
        if named is not None:
            account.members_by[state.lead_id] = dict(named)
        if account.as_of is None or clock > account.as_of:
            account.as_of = clock
        if len(account.members) > MAX_MEMBERS:
            self._drop_least_engaged(account)
        self.score(account)

    def drop(self, account: Account, lead_id: str) -> None:
        """A member left the account (joined another, or was merged into another lead)."""
        account.members_by.pop(lead_id, None)
        account.member_phases.pop(lead_id, None)
        if account.members.pop(lead_id, None) is not None:
            self.score(account)

    def forget(self, account: Account, lead_id: str) -> None:
        """A member erased: gone as if it had never been one, its activity from the
        account's clock too (which the members that remain, and adjustments, set again)."""
        account.members_by.pop(lead_id, None)
        account.member_phases.pop(lead_id, None)
        account.members.pop(lead_id, None)
        clocks = [as_of for _, as_of, _ in account.members.values()]
        clocks.extend(as_of for _, as_of in account.adjusted.values())
        account.as_of = max(clocks) if clocks else None
        self.score(account)

    def _drop_least_engaged(self, account: Account) -> None:
        clock = account.as_of or 0.0
        decay = self.rules.decay_factor
        least = min(
            account.members.items(),
            key=lambda item: (item[1][0] * decay(clock - item[1][1]), item[0]),
        )
        del account.members[least[0]]
        account.members_by.pop(least[0], None)
        account.member_phases.pop(least[0], None)

    # -- the account's score ---------------------------------------------------------------

    def _fit_key(self, account: Account) -> tuple[int, int]:
        return (self.rules.version, account.version)

    def refresh_fit(self, account: Account) -> None:
        traits = account.traits
        holding = [rule for rule in self.spec.fit if rule.holds(None, traits, traits)]
        account.fit = sum(rule.points for rule in holding if DEFAULT_SCORE in rule.scores)
        account.fit_rules = [rule.id for rule in holding]
        account.fit_key = self._fit_key(account)

    def counted_members(self, account: Account) -> tuple[list[tuple[float, str]], set[str]]:
        """(the members counted in the roll-up as (capped value, lead id), largest first;
        the roles covered), as of the account's clock."""
        spec = self.spec
        clock = account.as_of or 0.0
        horizon = clock - spec.window
        decay = self.rules.decay_factor
        cap, floor, only_roles = spec.member_cap, spec.min_engagement, spec.only_roles_count
        candidates: list[tuple[float, str]] = []
        covered: set[str] = set()
        for lead_id, (engagement, as_of, role) in account.members.items():
            value = engagement if as_of == clock else engagement * decay(clock - as_of)
            if role is not None:
                if as_of >= horizon and value >= floor:
                    covered.add(role)
            elif only_roles:
                continue
            if value > 0:
                candidates.append((min(value, cap), lead_id))
        # Ties broken by lead id, so the members shown do not depend on arrival order.
        top = heapq.nlargest(spec.top_members, candidates, key=lambda c: (c[0], c[1]))
        return top, covered

    def score(self, account: Account) -> None:
        """Recompute the account's parts as of its clock."""
        if account.fit_key != self._fit_key(account):
            self.refresh_fit(account)
        top, covered = self.counted_members(account)
        account.engagement = sum(value for value, _ in top) + self.adjusted(account, DEFAULT_SCORE)
        account.covered = [role for role in self.role_order if role in covered]
        account.coverage = sum(self.role_points[role] for role in account.covered)
        account.ruleset_version = self.rules.version

    def adjusted(self, account: Account, score: str) -> float:
        """What admins' adjustments add to the account's engagement in `score`, now."""
        entry = account.adjusted.get(score)
        if entry is None:
            return 0.0
        value, as_of = entry
        return value * self.rules.decay_factor((account.as_of or as_of) - as_of)

    def adjust(
        self, account: Account, *, scores: list[str], operation: str, value: float, at: float
    ) -> None:
        """Set (`set`) or change (`add`) the account's engagement in `scores`: kept as an
        adjustment the members' roll-up is added to, as of the account's clock."""
        if account.as_of is None or at > account.as_of:
            account.as_of = at
        clock = account.as_of
        current = self.score_docs(account)
        for name in scores:
            delta = value - current[name]["engagement"] if operation == "set" else value
            account.adjusted[name] = [self.adjusted(account, name) + delta, clock]
        self.score(account)

    def score_docs(self, account: Account) -> dict[str, records.AccountScoreDoc]:
        """Every score of the account: the default one's parts, and each named score's fit
        (its account fit rules), engagement (the same roll-up over the members' engagement
        in that score) and the committee's coverage (the roles are the account's)."""
        docs = {
            DEFAULT_SCORE: records.account_score_doc(
                account.fit, account.engagement, account.coverage
            )
        }
        book = self.rules.book
        if not book.several:
            return docs
        spec = self.spec
        clock = account.as_of or 0.0
        decay = self.rules.decay_factor
        holding = set(account.fit_rules)
        for score in book.scores[1:]:
            name = score.name
            fit = sum(r.points for r in spec.fit if r.id in holding and name in r.scores)
            values: list[tuple[float, str]] = []
            for lead_id, (_, as_of, role) in account.members.items():
                if role is None and spec.only_roles_count:
                    continue
                engagement = account.members_by.get(lead_id, {}).get(name, 0.0)
                value = engagement if as_of == clock else engagement * decay(clock - as_of)
                if value > 0:
                    values.append((min(value, spec.member_cap), lead_id))
            top = heapq.nlargest(spec.top_members, values, key=lambda c: (c[0], c[1]))
            docs[name] = records.account_score_doc(
                fit, sum(value for value, _ in top) + self.adjusted(account, name), account.coverage
            )
        return docs

    def required_covered(self, account: Account) -> bool:
        return all(role in account.covered for role in self.spec.required)

    def explain(
        self, account: Account
    ) -> tuple[records.AccountScoreDoc, list[str], list[str], list[records.MemberDoc]]:
        """(score, roles covered, roles missing, the counted members with their shares of the
        engagement, adding up to it to the cent)."""
        score = records.account_score_doc(account.fit, account.engagement, account.coverage)
        top, _ = self.counted_members(account)
        adjusted = self.adjusted(account, DEFAULT_SCORE)
        # An admin's adjustment is a part of its own (lead_id `adjust:default`), so the
        # parts still add up to the engagement.
        parts = [*top, (adjusted, ADJUSTED_MEMBER)] if adjusted else top
        shares = records.apportion([value for value, _ in parts], score["engagement"])
        members: list[records.MemberDoc] = [
            {
                "lead_id": lead_id,
                "role": account.members[lead_id][2] if lead_id in account.members else None,
                "contribution": share,
            }
            for (_, lead_id), share in zip(parts, shares, strict=True)
        ]
        missing = [role for role in self.role_order if role not in account.covered]
        return score, list(account.covered), missing, members

    # -- stages --------------------------------------------------------------------------

    def earned(self, account: Account, reason: str | None = None) -> Move | None:
        """The stage the account's score and committee have earned, if it is a move up
        (`reason` replaces the usual one, as re-scoring does)."""
        move = automatic_account_move(
            stage=account.stage,
            engagement=account.engagement,
            total=account.total,
            engaged_threshold=self.spec.engaged_threshold,
            mqa_threshold=self.spec.mqa_threshold,
            required_covered=self.required_covered(account),
        )
        if move is not None and reason is not None:
            return Move(move.to_stage, reason)
        return move

    def move(
        self,
        account: Account,
        move: Move,
        transitions: list[records.AccountTransitionDoc],
        notifications: list[records.AccountNotificationDoc],
        *,
        caused_by: str | None,
        at: float,
        now: float,
        detail: str | None = None,
    ) -> None:
        account.seq += 1
        score, covered, missing, members = self.explain(account)
        transition = records.account_transition_record(
            account_id=account.account_id,
            seq=account.seq,
            from_stage=account.stage,
            to_stage=move.to_stage,
            reason=move.reason,
            score=score,
            roles_covered=covered,
            roles_missing=missing,
            top_members=members,
            ruleset_version=self.rules.version,
            caused_by=caused_by,
            occurred_at=at,
            emitted_at=now,
            reason_detail=detail,
            scores=self.score_docs(account),
        )
        account.stage = move.to_stage
        account.stage_entered_at = at
        transitions.append(transition)
        if move.to_stage == "mqa":
            notifications.append(
                records.account_qualified_record(
                    transition=transition,
                    profile_doc=records.account_profile(account.traits),
                    owner=self.owner(account),
                )
            )

    def owner(self, account: Account) -> str:
        """The account's owner from its traits, else the queue routing picks for it (the
        shell then names the queue's next owner in turn)."""
        named = lookup(account.traits, self.spec.owner_trait)
        if isinstance(named, str) and named.strip():
            return named.strip()[:200]
        return records.QUEUE_PREFIX + self.rules.queue_for({}, account.traits)
