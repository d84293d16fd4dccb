"""The pure core runs as the build asked for: compiled by mypyc, or from source."""

from __future__ import annotations

import os

import pytest

import scoring_service.engine
import scoring_service.lead_scores
import scoring_service.pipeline
import scoring_service.routing
import stage_router.lifecycle
from stage_router.compiled import interpreted_requested, is_compiled

CORE = (
    scoring_service.lead_scores,
    scoring_service.routing,
    scoring_service.engine,
    scoring_service.pipeline,
    stage_router.lifecycle,
)


@pytest.mark.skipif(not interpreted_requested(), reason="the interpreted run (make test)")
def test_the_interpreted_build_runs_every_module_from_source():
    assert [m.__name__ for m in CORE if is_compiled(m)] == []


@pytest.mark.skipif(
    not os.environ.get("LEADSCORE_EXPECT_COMPILED"), reason="make test, after make compile"
)
def test_the_compiled_build_runs_every_module_compiled():
    assert [m.__name__ for m in CORE if not is_compiled(m)] == []
