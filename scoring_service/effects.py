"""What scoring asks the outside world to do: the hits of an event, and the records, handoffs
and journey moves a commit stores and publishes. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from stage_router import records


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that matched an event; `counted` is False when its limit ignored it."""

    rule_id: str
    points: float
    counted: bool


class Effects:
    """What scoring one event (or a merge) asks the outside world to do.

    A plain class rather than a dataclass: one is made per event, and default factories
    cost more than the scoring of a typical page view.
    """

    __slots__ = (
        "account_notifications",
        "account_transitions",
        "handoffs",
        "hits",
        "journey_moves",
        "notifications",
        "transitions",
    )

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.transitions: list[records.TransitionDoc] = []
        self.notifications: list[records.NotificationDoc] = []
        self.handoffs: list[records.Handoff] = []
        self.account_transitions: list[records.AccountTransitionDoc] = []
        self.account_notifications: list[records.AccountNotificationDoc] = []
        self.journey_moves: list[records.JourneyMoveDoc] = []

    def extend(self, other: Effects) -> None:
        self.transitions.extend(other.transitions)
        self.notifications.extend(other.notifications)
        self.handoffs.extend(other.handoffs)
        self.account_transitions.extend(other.account_transitions)
        self.account_notifications.extend(other.account_notifications)
        self.journey_moves.extend(other.journey_moves)
