"""Hostile input events (hypothesis strategies), shared by the pure tests and the fault suite.

Each message starts as a well-formed Segment call and has one or more fields replaced by a
value a careless or malicious sender could put there: the wrong type, NUL characters, deep
nesting, absurd timestamps, URLs that cannot be split, raw bytes that are not JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.helpers.factories import at

# Fields the intake or the starter rules read, as paths into the event.
FIELDS = [
    ("type",),
    ("messageId",),
    ("userId",),
    ("anonymousId",),
    ("timestamp",),
    ("event",),
    ("groupId",),
    ("previousId",),
    ("properties",),
    ("properties", "url"),
    ("properties", "path"),
    ("traits",),
    ("traits", "title"),
    ("traits", "email"),
    ("traits", "company"),
    ("traits", "company", "country"),
    ("traits", "company", "employees"),
    ("context",),
    ("context", "page"),
    ("context", "page", "path"),
]


class Deep:
    """A placeholder for nesting too deep to build as Python objects and encode."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def text(self) -> bytes:
        half = self.depth // 2
        return b'{"a":' * half + b"[1]" + b"}" * half


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "a\x00b", "http://[::1", "//[", "/pricing\x00", "é" * 300]),
)
timestamps = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "1969-12-31T23:59:59Z",
        "2026-13-01T00:00:00Z",
        "",
        "yesterday",
    ]
)
hostile_values = st.one_of(
    scalars,
    timestamps,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.text(max_size=5), scalars, max_size=4),
    st.dictionaries(st.sampled_from(["a", "\x00", "b\x00"]), scalars, min_size=1, max_size=2),
    st.integers(min_value=33, max_value=1100).map(Deep),
)
# Raw messages that never parse as one JSON object.
raw_garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b'{"type":"page","messageId":"x","userId":"\\ud800"}',
            b"[1,2,3]",
            b"null",
            b'"just text"',
            b"{" * 2000,
        ]
    ),
)


@st.composite
def valid_event(draw: st.DrawFn, index: int = 0) -> dict[str, Any]:
    kind = draw(st.sampled_from(["page", "track", "identify", "group", "alias"]))
    user = f"hu-{draw(st.integers(min_value=0, max_value=30))}"
    doc: dict[str, Any] = {
        "type": kind,
        "messageId": f"hm-{draw(st.integers(min_value=0, max_value=10**9))}",
        "userId": user,
        "timestamp": at(days=draw(st.integers(min_value=0, max_value=10))),
    }
    if kind == "page":
        doc["properties"] = {"path": draw(st.sampled_from(["/pricing", "/blog/x", "/careers"]))}
    elif kind == "track":
        doc["event"] = draw(st.sampled_from(["Demo Requested", "Email Replied", "Other"]))
    elif kind == "identify":
        doc["traits"] = {"title": "VP Sales", "company": {"country": "US", "employees": 40}}
    elif kind == "group":
        doc["groupId"] = "acct-1"
        doc["traits"] = {"industry": "software"}
    else:
        doc["previousId"] = f"anon-{draw(st.integers(min_value=0, max_value=30))}"
    return doc


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = doc
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value


@st.composite
def hostile_message(draw: st.DrawFn) -> bytes:
    """One message to produce: mostly valid events with hostile fields, some raw garbage."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(raw_garbage)
    doc = draw(valid_event())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        _put(doc, draw(st.sampled_from(FIELDS)), draw(hostile_values))
    deep: list[Deep] = []

    def placeholder(value: Any) -> str:
        deep.append(value)
        return f"__deep_{len(deep) - 1}__"

    # The standard encoder, since orjson refuses integers beyond 64 bits (a sender may not).
    raw = json.dumps(doc, default=placeholder).encode()
    for index, value in enumerate(deep):
        raw = raw.replace(f'"__deep_{index}__"'.encode(), value.text())
    return raw
