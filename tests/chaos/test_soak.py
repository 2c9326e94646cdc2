"""Soak: thousands of jobs one after another, then hundreds at once, and nothing accumulates.

The supervisor's fds, threads and children return to their baseline and its memory grows by less
than 20 MB. Jobs are forked from a warm template (a few ms each), as a worker runs them.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import psutil
import pytest
from tests.chaos.chaos_helpers import (
    HELLO,
    Baseline,
    own_fds,
    own_threads,
    settled,
    zombies_of_ours,
)
from tests.helpers import function_request, make_settings

from sandvisor.supervisor.core import Supervisor

pytestmark = pytest.mark.chaos

SEQUENTIAL = 2000
AT_ONCE = 200
RSS_GROWTH_BOUND = 20 * 1024 * 1024

JOB = function_request(
    "import sys\ndef main(i):\n    print('job', i)\n    print('err', i, file=sys.stderr)\n"
    "    return i * 2\n",
    args=[0],
)


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.timeout(300)
async def test_soak_sequential_then_at_once(tmp_path: Path) -> None:
    async with Supervisor(make_settings(tmp_path / "home")) as sup:
        # Warm up: the loop's executor threads, allocator arenas and caches settle first.
        for _ in range(50):
            assert (await sup.run(HELLO)).success
        baseline = Baseline.take()
        rss_before = rss()

        for index in range(SEQUENTIAL):
            response = await sup.run(JOB | {"args": [index]})
            assert response.success, response.error
            assert response.json_result == index * 2
        assert f"job {SEQUENTIAL - 1}" in (response.stdout or "")
        _assert_baseline(baseline)

        responses = await asyncio.gather(
            *(sup.run(JOB | {"args": [index]}) for index in range(AT_ONCE))
        )
        assert [r.json_result for r in responses] == [index * 2 for index in range(AT_ONCE)]
        assert sup.running_jobs == []
        _assert_baseline(baseline)

        growth = rss() - rss_before
        assert growth < RSS_GROWTH_BOUND, f"supervisor RSS grew by {growth / 1e6:.1f} MB"


def _assert_baseline(baseline: Baseline) -> None:
    assert settled(zombies_of_ours) == []
    assert settled(lambda: own_fds() > baseline.fds) is False, (own_fds(), baseline.fds)
    assert settled(lambda: own_threads() > baseline.threads) is False, (
        own_threads(),
        baseline.threads,
    )
    children = settled(lambda: len(psutil.Process().children()) > baseline.children)
    assert children is False, psutil.Process().children()
