"""What changed between two rule-set versions, rule by rule and field by field. Pure."""

from __future__ import annotations

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
