"""One supervisor for a whole module of parity rows, and a leftover check that allows for it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest
import pytest_asyncio
from tests.helpers import make_settings

from sandvisor.sandbox_child.template import SPARE_NAME
from sandvisor.supervisor.core import Supervisor


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_supervisor(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Supervisor]:
    """A supervisor with a warm template, shared by the module's rows: a start per row would
    cost more than the rows themselves. Its template learns a preload from a single job, so
    later rows run with what earlier ones imported already imported, as a worker's would."""
    home = tmp_path_factory.mktemp("parity") / "home"
    settings = make_settings(home, adaptive_preload=True, preload_learn_after=1)
    async with Supervisor(settings) as running:
        yield running


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every process a test starts is gone when it ends, but the shared template's next spare.

    Overrides the suite's check: the module's supervisor outlives each test, and its template
    forks a spare (named ``sv:spare``) for the next job after each one, or is replaced by one
    that learned a preload. Anything else new, a job's leftover included, is a failure as it
    is everywhere else.
    """
    me = psutil.Process(os.getpid())
    before = {child.pid for child in me.children(recursive=True)}
    yield
    started = [
        child
        for child in me.children(recursive=True)
        if child.pid not in before and not _is_spare(child, before)
    ]
    _, alive = psutil.wait_procs(started, timeout=5)
    for process in alive:
        process.kill()
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


def _is_spare(process: psutil.Process, before: set[int]) -> bool:
    """The shared template's next spare, or a template that learned a preload (it replaced
    the old one, see ``supervisor/preload_trials.py``) with its spare."""
    try:
        if process.name() == SPARE_NAME:
            return process.ppid() in before or _is_template(psutil.Process(process.ppid()))
        return _is_template(process) and process.ppid() == os.getpid()
    except psutil.NoSuchProcess:
        return False


def _is_template(process: psutil.Process) -> bool:
    return "--template" in process.cmdline()
