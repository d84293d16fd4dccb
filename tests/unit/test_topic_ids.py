"""The topic-id question's answers when the broker cannot give ids: a broker that has no
Metadata v12 turns the id fence off (fingerprints take over); a connection that does not know
the broker's versions yet is a transient error, never a reason to turn the fence off."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError

from services.adapters.kafka import TopicIds, TopicMissing


class _Client:
    """A client seam: one node, and `send` answering with what the test says."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    def get_random_node(self) -> int:
        return 1

    async def send(self, node: int, request: Any) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class _Answer:
    def __init__(self, *topics: tuple[int, str, uuid.UUID]) -> None:
        self.topics = topics


async def test_unknown_versions_are_asked_again_and_the_fence_stays_on() -> None:
    topic_id = uuid.uuid4()
    ids = TopicIds(_Client(IncompatibleBrokerVersion("unknown"), _Answer((0, "t", topic_id))))
    with pytest.raises(KafkaError, match="not known yet"):
        await ids.current("t")
    assert ids.supported
    assert await ids.current("t") == topic_id


async def test_a_broker_without_v12_turns_the_fence_off_for_good() -> None:
    ids = TopicIds(_Client(NotImplementedError("no v12")))
    assert await ids.current("t") is None
    assert not ids.supported
    assert await ids.current("t") is None  # not asked again (the client has no answers left)


async def test_a_topic_that_does_not_exist_is_missing() -> None:
    ids = TopicIds(_Client(_Answer((TopicIds.UNKNOWN_TOPIC, "t", uuid.UUID(int=0)))))
    with pytest.raises(TopicMissing):
        await ids.current("t")
