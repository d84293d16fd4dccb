"""Opaque page cursors and report windows: what a page or a report continues after, checked
as hostile input (a cursor this service did not give out is a 400, not a 500)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.app.errors import ApiError


def cursor_of(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def uncursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        text = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    if "\x00" in text:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out")
    return text


def int_cursor(cursor: str | None, default: int) -> int:
    text = uncursor(cursor)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    if not 0 < value <= 2**62:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out")
    return value


def next_page_cursor(
    rows: list[Any], limit: int, *, id_key: str, score_key: str, by_score: bool
) -> str | None:
    """The cursor after the last row of a full page (None after a short, last page): the
    last (score and) id, so pages stay stable while scores change."""
    if len(rows) < limit:
        return None
    last = rows[-1]
    if by_score:
        return cursor_of(orjson.dumps([last[score_key], last[id_key]]).decode())
    return cursor_of(last[id_key])


def time_window(
    since: datetime | None, until: datetime | None, *, default_days: float
) -> tuple[datetime, datetime]:
    """A report's [since, until): until defaults to now, since to `default_days` before it;
    both need a UTC offset and since must come first (422 otherwise)."""
    until = until or datetime.now(UTC)
    try:
        since = since or until - timedelta(days=default_days)
    except OverflowError as exc:  # an `until` in the first year of the calendar
        raise ApiError(422, "invalid_request", "until is too early for a default since") from exc
    if since.tzinfo is None or until.tzinfo is None:
        raise ApiError(422, "invalid_request", "since and until need a UTC offset")
    if since >= until:
        raise ApiError(422, "invalid_request", "since must be before until")
    return since, until


def _pair_cursor(cursor: str | None, first_is: Callable[[Any], bool]) -> tuple[Any, str] | None:
    """The (sort value, id) a page continues after, its value checked by `first_is`."""
    text = uncursor(cursor)
    if not text:
        return None
    try:
        first, key = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from exc
    if not first_is(first) or not isinstance(key, str):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out")
    return first, key


def label_cursor(cursor: str | None) -> tuple[str, str] | None:
    """The (label, id) a label-ordered page continues after."""
    return _pair_cursor(cursor, lambda label: isinstance(label, str) and len(label) <= 2)


def score_cursor(cursor: str | None) -> tuple[float, str] | None:
    """The (total, id) a score-ordered page continues after."""
    pair = _pair_cursor(
        cursor, lambda total: isinstance(total, int | float) and not isinstance(total, bool)
    )
    return (float(pair[0]), pair[1]) if pair is not None else None
