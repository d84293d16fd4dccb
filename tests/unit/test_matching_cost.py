"""Matching stays linear in the size of what it reads: no condition, however it is written,
can make a hostile trait or path cost more than a scan of it.

Work is counted, not timed: the Python lines run while matching (each character the word
folding reads is one) must grow at most in proportion to the input; what runs below Python
is str.find / startswith / endswith / in over bounded needles, linear by construction.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas.rule_set import When
from scoring_service import rules
from scoring_service.intake import Event
from scoring_service.rules import compile_condition

CONDITIONS = [
    {"trait": "title", "words_any": ["vice president", "head of", "a a a a b"]},
    {"trait": "title", "contains_any": ["aaaaab", "intern"]},
    {"trait": "title", "starts_with_any": ["aaab"], "ends_with_any": ["baaa"]},
    {
        "all": [
            {"trait": "title", "words_any": ["owner"]},
            {"not": {"any": [{"trait": "title", "words_any": ["product owner", "a b"]}]}},
        ]
    },
    {"path": ["/a*a*a*a*b", "*aaa*bbb*"]},
    {"type": "page", "context.campaign.source": {"words_any": ["a a b"]}},
]

pieces = st.sampled_from(["a", " a", "b", "-", "é", "A", "\u0301", "ab", " "])


def work(check: Callable[[], Any]) -> int:
    """Python lines executed by `check`, with the cache of folded short texts off: a text
    remembered from an earlier call would cost the small input nothing and make any growth
    look superlinear (hypothesis found that: 20 lines against 11,626)."""
    lines = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    remembered = rules._REMEMBERED_TEXT
    rules._REMEMBERED_TEXT = -1
    sys.settrace(tracer)
    try:
        check()
    finally:
        sys.settrace(None)
        rules._REMEMBERED_TEXT = remembered
    return lines


def matcher(condition: dict[str, Any], text: str) -> Callable[[], Any]:
    test = compile_condition(When.model_validate(condition))
    event = Event(
        type="page",
        message_id="m",
        user_id="u",
        anonymous_id=None,
        ts=0.0,
        path=text.casefold(),
        properties={},
        context={"campaign": {"source": text}},
    )
    return lambda: test(event, {"title": text}, None)


@settings(max_examples=60, deadline=None)
@example("aé béaba-éA é-é\u0301é aa", CONDITIONS[3])
@given(st.lists(pieces, min_size=1, max_size=30).map("".join), st.sampled_from(CONDITIONS))
def test_matching_work_grows_at_most_linearly_with_the_input(unit, condition):
    small, large = unit * 10, unit * 100
    small_work = work(matcher(condition, small))
    large_work = work(matcher(condition, large))
    # Ten times the input may cost at most ten times the work (plus a constant for setup).
    assert large_work <= 10 * small_work + 50, (small_work, large_work)
