"""The in-memory copies of leads (services/pipeline/lead_cache.py): taken out while a
transaction uses them, put back only after a commit, bounded, least recently written first."""

from __future__ import annotations

from scoring_service.state import LeadState
from services.pipeline.lead_cache import LeadCache


def _leads(*ids: str) -> dict[str, LeadState]:
    return {i: LeadState(lead_id=i) for i in ids}


def test_a_taken_copy_is_gone_until_put_back() -> None:
    cache = LeadCache(10)
    leads = _leads("a", "b")
    cache.put(leads, {"a": 3, "b": 0})
    taken = cache.take(["a", "c"])
    assert taken == {"a": (3, leads["a"])}
    # A transaction that fails puts nothing back: its copy of "a" may be half changed.
    assert cache.take(["a"]) == {}
    assert len(cache) == 1


def test_only_written_leads_are_kept_and_the_oldest_go_first() -> None:
    cache = LeadCache(2)
    leads = _leads("a", "b", "c")
    cache.put(leads, {"a": 1})
    cache.put(leads, {"b": 1})
    cache.put(leads, {"a": 2})  # written again: now the most recent
    cache.put(leads, {"c": 1, "gone": 4})  # a version without a state (merged away) is skipped
    assert set(cache.take(["a", "b", "c", "gone"])) == {"a", "c"}


def test_capacity_zero_keeps_nothing() -> None:
    cache = LeadCache(0)
    cache.put(_leads("a"), {"a": 1})
    assert len(cache) == 0
