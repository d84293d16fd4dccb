"""Three service processes in one group over six partitions; one is killed mid-stream."""

from __future__ import annotations

import pytest

from bench.cluster import scale_out
from bench.workload import generate


@pytest.mark.slow
async def test_survivors_take_over_and_scores_equal_a_single_run(settings, tmp_path):
    docs = list(generate(events=12_000, leads=600, seed=13))
    small = settings.with_changes(batch_max_records=300)
    result = await scale_out(
        small, docs, processes=3, kill_at=0.3, log_dir=tmp_path, say=lambda _: None
    )
    assert result["killed_after"] < len(docs)
    assert result["leads_different"] == []
    assert result["leads_in_database"] == result["leads"]
    assert result["same_as_single_run"]
