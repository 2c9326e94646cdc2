"""A job that waits before it starts says so while it waits: for its env to build, for its
env's template to start, for a GPU. Each wait is held open by the test until the notice came."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import eventually, function_request, make_settings
from tests.integration.envs_helpers import StallingIndex
from tests.wheelhouse import build_wheel

from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import LogEvent, Supervisor
from sandvisor.supervisor.settings import Settings

#: Short, so a test waits little for the first notice; the notices are about waits, not time.
INTERVAL_S = 0.05

WAIT_FOR_FLAG = """
import os, time, pathlib
def main(flag, started=None):
    if started:
        pathlib.Path(started).touch()
    while not os.path.exists(flag):
        time.sleep(0.01)
    return "done"
"""


async def until_notice(
    events: AsyncIterator[LogEvent | FunctionResponse], wanted: str, then: Callable[[], Any]
) -> tuple[str, FunctionResponse]:
    """Read the job's events until a system line containing ``wanted``; then ``then()`` (which
    ends the wait) and read on to the response. Returns the notice and the response."""
    seen = ""
    async for item in events:
        if isinstance(item, FunctionResponse):
            assert seen, f"the job ended without saying {wanted!r}: {item.stdout}"
            return seen, item
        if not seen and item.stream == "system" and wanted in item.text:
            seen = item.text
            then()
    raise AssertionError("the stream ended without a response")


async def test_an_env_build_says_it_is_still_installing(
    settings: Settings, stalling: StallingIndex
) -> None:
    quick = settings.model_copy(update={"wait_notice_interval_s": INTERVAL_S})
    async with Supervisor(quick) as sup:
        request = function_request("def main():\n    return 1\n", dependencies=["tinypkg"])
        line, response = await until_notice(
            sup.stream(request), "still installing dependencies (", stalling.release
        )
    assert response.success, response.error
    assert line.startswith("still installing dependencies (") and " s" in line
    assert "[sandvisor] still installing dependencies (" in (response.stdout or "")


async def test_a_gpu_wait_says_it_is_still_waiting(tmp_path: Path) -> None:
    flag, started = tmp_path / "release", tmp_path / "holder-started"
    settings = make_settings(tmp_path / "home", gpus="0", wait_notice_interval_s=INTERVAL_S)
    async with Supervisor(settings) as sup:
        holder = asyncio.ensure_future(
            sup.run(function_request(WAIT_FOR_FLAG, args=[str(flag), str(started)]))
        )
        assert await eventually(started.exists, within_s=30)  # it holds the one GPU now
        line, waiter = await until_notice(
            sup.stream(function_request(WAIT_FOR_FLAG, args=[str(flag)])),
            "still waiting for 1 GPU(s)",
            flag.touch,
        )
        held = await holder
    assert held.success and waiter.success, (held.error, waiter.error)
    assert line.startswith("still waiting for 1 GPU(s) (")


@pytest.fixture
def gated_preload(tmp_path: Path, offline_uv: Callable[[Path | str], None]) -> Path:
    """A package whose import waits for a flag file: its env's template starts when told."""
    flag = tmp_path / "let-the-template-start"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    code = f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.01)\n"
    build_wheel(wheels, "gatelib", "1.0", code=code)
    offline_uv(wheels)
    return flag


async def test_a_template_start_says_it_is_still_starting(
    tmp_path: Path, gated_preload: Path
) -> None:
    settings = make_settings(
        tmp_path / "home", preload=["gatelib"], wait_notice_interval_s=INTERVAL_S
    )
    async with Supervisor(settings) as sup:  # the base template cannot import it: not fatal
        request = function_request(
            "import gatelib\ndef main():\n    return gatelib.__version__\n",
            dependencies=["gatelib"],
        )
        line, response = await until_notice(
            sup.stream(request),
            "still waiting for the env's warm template to start",
            gated_preload.touch,
        )
    assert response.success and response.json_result == "1.0", response.error
    assert line.startswith("still waiting for the env's warm template to start (")
