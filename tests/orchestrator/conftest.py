"""Fixtures the orchestrator's stream tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def stream_cache(tmp_path_factory):
    """One tiny-model cache (RAY_UNLEARN_CACHE) for every stream test's processes: they run one small config
    (`benchmarks/stream_kills.py`'s), whose target and retain models are then prepared once."""
    return tmp_path_factory.mktemp("stream-cache")
