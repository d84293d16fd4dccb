"""Input events on `lead-events`: the Segment Spec subset docs/reference/topics.md
section describes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

EVENT_TYPES = frozenset({"page", "track", "identify", "group", "alias"})


def _id_text(value: Any) -> Any:
    # Segment allows numeric user ids; the lead id is always text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Identifier = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=512)]


class SegmentEvent(BaseModel):
    """Fields common to every Segment call."""

    model_config = ConfigDict(extra="allow")

    messageId: Identifier | None = Field(
        default=None,
        description="the event's id, for dropping duplicates; made from the message's bytes "
        "when missing, as Segment's tracking API makes one",
    )
    userId: Identifier | None = None
    anonymousId: Identifier | None = None
    timestamp: datetime | None = None
    context: dict[str, Any] | None = None


class PageEvent(SegmentEvent):
    type: Literal["page"]
    name: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class TrackEvent(SegmentEvent):
    type: Literal["track"]
    event: str = Field(min_length=1, max_length=512)
    properties: dict[str, Any] = Field(default_factory=dict)


class IdentifyEvent(SegmentEvent):
    type: Literal["identify"]
    traits: dict[str, Any] = Field(default_factory=dict)


class GroupEvent(SegmentEvent):
    type: Literal["group"]
    groupId: Identifier
    traits: dict[str, Any] = Field(default_factory=dict)


class AliasEvent(SegmentEvent):
    type: Literal["alias"]
    previousId: Identifier
    userId: Identifier


AnySegmentEvent = Annotated[
    PageEvent | TrackEvent | IdentifyEvent | GroupEvent | AliasEvent,
    Field(discriminator="type"),
]
