"""Each scenario run by sandvisor and by a fresh ``python``: the answers must be the same.

A row may name why sandvisor must answer otherwise (``Scenario.differs`` and ``why``); any other
difference is a failure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.helpers import make_settings
from tests.parity.harness import Scenario, expected_of, run_baseline, run_sandvisor
from tests.parity.scenarios import ALL

from sandvisor.supervisor.core import Supervisor


def rows() -> list[object]:
    return [pytest.param(s, id=s.id) for s in ALL]


def test_the_table_is_large_and_its_ids_unique():
    ids = [scenario.id for scenario in ALL]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert all(scenario.why for scenario in ALL if scenario.differs)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("scenario", rows())
async def test_sandvisor_answers_as_plain_python(
    scenario: Scenario, module_supervisor: Supervisor, tmp_path: Path
):
    if scenario.is_class:
        # An instance lives on after its call: a supervisor of its own stops it with the test.
        async with Supervisor(make_settings(tmp_path / "home")) as supervisor:
            sandvisor, baseline = await asyncio.gather(
                run_sandvisor(supervisor, scenario), run_baseline(scenario, tmp_path / "python")
            )
    else:
        sandvisor, baseline = await asyncio.gather(
            run_sandvisor(module_supervisor, scenario), run_baseline(scenario, tmp_path / "python")
        )
        if await learned_from(module_supervisor):
            # What it imported is preloaded now: the same job must answer the same.
            assert await run_sandvisor(module_supervisor, scenario) == sandvisor
    assert sandvisor == expected_of(scenario, baseline)


async def learned_from(supervisor: Supervisor) -> bool:
    """Wait for the template to learn from the row's job; whether it learned a module."""
    pool = supervisor.templates
    assert pool is not None
    before = {key: list(pool.trials.learner(key).learned) for key in pool.running}
    await pool.trials.settled()
    return any(pool.trials.learner(key).learned != learned for key, learned in before.items())
