"""The garbage collector as a serving process sets it up (``server.tune_gc``)."""

from __future__ import annotations

import gc

from harbor_router import server


def test_the_young_generation_is_collected_less_often() -> None:
    before = gc.get_threshold()
    assert before[0] < server.GC_YOUNG_THRESHOLD
    try:
        server.tune_gc()
        assert gc.get_threshold() == (server.GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
