"""Event time as epoch seconds inside the engine, ISO-8601 UTC at the edges."""

from __future__ import annotations

from datetime import UTC, datetime

DAY = 86_400.0


def iso(ts: float) -> str:
    """Epoch seconds -> '2026-11-20T09:17:40Z' (milliseconds only when there are some)."""
    moment = datetime.fromtimestamp(ts, UTC)
    if moment.microsecond:
        text = moment.isoformat(timespec="milliseconds")
    else:
        text = moment.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """ISO-8601 -> epoch seconds; a timestamp without an offset is taken as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
