"""observe_many must leave a histogram exactly as that many `observe` calls would; batch
size classes hold every size once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.metrics import SIZE_CLASSES, observe_many, size_class

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (
        one,
        Histogram("h", "h", buckets=BUCKETS, registry=one),
        many,
        Histogram("h", "h", buckets=BUCKETS, registry=many),
    )


def test_many_observations_at_once_match_one_at_a_time() -> None:
    one, by_one, many, at_once = _pair()
    # Values below, on and between the bounds, and past the last one (+Inf).
    for value, times in ((0.0005, 3), (0.01, 2), (0.05, 7), (1.0, 1), (5.0, 4), (0.2, 0)):
        for _ in range(times):
            by_one.observe(value)
        observe_many(at_once, value, times)
    assert _samples(many) == _samples(one)
    assert 'h_bucket{le="0.01"} 5.0' in _samples(many)


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without the creation time (each histogram its own)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if not line.startswith(("#", "h_created"))]


def test_each_batch_size_falls_in_the_smallest_class_that_holds_it() -> None:
    assert [size_class(n) for n in (1, 2, 5, 6, 20, 21, 2000, 2001)] == [
        "1",
        "5",
        "5",
        "20",
        "20",
        "50",
        "2000",
        "more",
    ]
    # Every bound is its own class's largest batch.
    assert all(size_class(bound) == str(bound) for bound in SIZE_CLASSES)
