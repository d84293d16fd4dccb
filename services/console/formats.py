"""How the console writes values for people: times, numbers, durations, rule sets as YAML."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml

from schemas import api

# Shown where a figure does not exist (no data), rather than a misleading zero.
NONE = "\N{EN DASH}"


def when(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def num(value: Any) -> str:
    if value is None:
        return NONE
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def source_text(version: api.RuleSetPublic) -> str:
    """A version as its author wrote it; a version published before sources were kept, as
    YAML made from its document."""
    return version.source or as_yaml(version.document)


def as_yaml(document: Any) -> str:
    """A stored document as YAML for people: fields left unset (null) are left out."""
    return yaml.safe_dump(without_nulls(document), sort_keys=False, allow_unicode=True, width=100)


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value
