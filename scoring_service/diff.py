"""What changed between two rule-set versions, rule by rule and field by field. Pure."""

from __future__ import annotations

import difflib
from typing import Any


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _changes(old: Any, new: Any) -> list[dict[str, Any]]:
    before, after = _flatten(old), _flatten(new)
    return [
        {"field": field, "from": before.get(field), "to": after.get(field)}
        for field in sorted(before.keys() | after.keys())
        if before.get(field) != after.get(field)
    ]


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Rules added, removed and changed (with each field that changed), and settings changes
    (thresholds, decay, SLAs, ...). Documents are compared as published (JSON form)."""
    old_rules = {r["id"]: r for r in old.get("rules", [])}
    new_rules = {r["id"]: r for r in new.get("rules", [])}
    changed = [
        {"id": rule_id, "changes": changes}
        for rule_id in old_rules.keys() & new_rules.keys()
        if (changes := _changes(old_rules[rule_id], new_rules[rule_id]))
    ]
    return {
        "rules": {
            "added": [r for r in new_rules if r not in old_rules],
            "removed": [r for r in old_rules if r not in new_rules],
            "changed": sorted(changed, key=lambda c: c["id"]),
        },
        "settings": _changes(
            {k: v for k, v in old.items() if k != "rules"},
            {k: v for k, v in new.items() if k != "rules"},
        ),
    }


# One row of a side-by-side view: how the two sides relate ("same", "changed", "removed",
# "added"), then each side's line number and text (None where that side has no line).
SideBySideRow = tuple[str, int | None, str | None, int | None, str | None]


def side_by_side(old: str, new: str) -> list[SideBySideRow]:
    """Two texts aligned line by line for reading next to each other: unchanged lines face
    each other, a replaced block pairs its lines in order, the rest face an empty cell."""
    before, after = old.splitlines(), new.splitlines()
    rows: list[SideBySideRow] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows.extend(
                ("same", i + 1, before[i], j + 1, after[j])
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
            )
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            i, j = i1 + k, j1 + k
            left = (i + 1, before[i]) if i < i2 else (None, None)
            right = (j + 1, after[j]) if j < j2 else (None, None)
            kind = "changed" if i < i2 and j < j2 else ("removed" if i < i2 else "added")
            rows.append((kind, *left, *right))
    return rows


def around_changes(rows: list[SideBySideRow], context: int = 3) -> list[SideBySideRow | int]:
    """The rows within `context` lines of a change; each run of other unchanged rows becomes
    its length (an int), for a view that says "N unchanged lines" instead of showing them."""
    near = [False] * len(rows)
    for index, row in enumerate(rows):
        if row[0] != "same":
            for k in range(max(0, index - context), min(len(rows), index + context + 1)):
                near[k] = True
    shown: list[SideBySideRow | int] = []
    hidden = 0
    for row, keep in zip(rows, near, strict=True):
        if keep:
            if hidden:
                shown.append(hidden)
                hidden = 0
            shown.append(row)
        else:
            hidden += 1
    if hidden:
        shown.append(hidden)
    return shown
