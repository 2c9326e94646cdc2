"""An env's template learns to preload what its jobs keep importing, and refuses what a fork
cannot carry or what would change a job's output; what it learned survives a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.helpers import function_request, make_settings
from tests.wheelhouse import build_wheel

from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.envs import EnvStore
from sandvisor.supervisor.settings import Settings

LIBRARIES = {
    "cleanlib": "VALUE = 42\n",
    "noisylib": "print('noisylib: loading plugins')\n",
    "threadlib": (
        "import threading\n"
        "threading.Thread(target=threading.Event().wait, name='threadlib-poller',"
        " daemon=True).start()\n"
    ),
}

JOB = """
import sys
PRELOADED = sorted(name for name in ("cleanlib", "noisylib", "threadlib") if name in sys.modules)
import cleanlib, noisylib, threadlib

def main():
    return {"value": cleanlib.VALUE, "preloaded": PRELOADED}
"""


@pytest.fixture
def learning(tmp_path: Path, offline_uv: Callable[[Path | str], None]) -> Settings:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, code in LIBRARIES.items():
        build_wheel(wheels, name, "1.0", code=code)
    offline_uv(wheels)
    return make_settings(tmp_path / "home", adaptive_preload=True, preload_learn_after=2)


async def run_job(supervisor: Supervisor) -> FunctionResponse:
    response = await supervisor.run(function_request(JOB, dependencies=sorted(LIBRARIES)))
    assert response.success, response.error
    # what the job's own imports print is its output, preloaded or not
    assert "noisylib: loading plugins" in (response.stdout or "")
    return response


async def test_a_template_learns_the_clean_module_and_refuses_the_others(
    learning: Settings,
) -> None:
    async with Supervisor(learning) as supervisor:
        for _ in range(2):
            assert (await run_job(supervisor)).json_result == {"value": 42, "preloaded": []}
        assert supervisor.templates is not None
        trials = supervisor.templates.trials
        await trials.settled()
        (key,) = [k for k in supervisor.templates.running if "envs" in k]
        learner = trials.learner(key)
        assert learner.learned == ["cleanlib"]
        assert learner.rejected["noisylib"] == "it writes 26 bytes of output on import"
        assert learner.rejected["threadlib"] == "it started threads on import (threadlib-poller)"
        assert (await run_job(supervisor)).json_result == {"value": 42, "preloaded": ["cleanlib"]}

    # A restarted worker's first template of that env imports it from the start.
    async with Supervisor(learning) as again:
        assert (await run_job(again)).json_result == {"value": 42, "preloaded": ["cleanlib"]}


async def test_without_learning_nothing_is_preloaded(learning: Settings) -> None:
    settings = learning.model_copy(update={"adaptive_preload": False})
    async with Supervisor(settings) as supervisor:
        for _ in range(3):
            assert (await run_job(supervisor)).json_result == {"value": 42, "preloaded": []}
        assert supervisor.templates is not None
        await supervisor.templates.trials.settled()
        assert not list(settings.preloads_dir.glob("*.json"))


async def test_what_an_env_learned_goes_with_the_env(learning: Settings) -> None:
    async with Supervisor(learning) as supervisor:
        for _ in range(2):
            await run_job(supervisor)
        assert supervisor.templates is not None
        await supervisor.templates.trials.settled()
        (record,) = learning.preloads_dir.glob("*.json")
        (env,) = supervisor.envs.list()
    EnvStore(learning).remove(env.key)
    assert not record.exists()

    # Rebuilt, the env learns afresh: its first jobs find nothing preloaded.
    async with Supervisor(learning) as again:
        assert (await run_job(again)).json_result == {"value": 42, "preloaded": []}
