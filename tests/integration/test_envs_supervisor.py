"""Dependency envs through ``Supervisor.run``/``stream``: what a caller of a job sees."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from tests.helpers import function_request
from tests.integration.envs_helpers import StallingIndex

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import LogEvent, Supervisor
from sandvisor.supervisor.settings import Settings

VERSIONS = """
def main(*names):
    import importlib, sys
    import sandvisor, cloudpickle, msgpack  # the runtime's own imports come from the base
    return {"python": sys.executable,
            **{n: importlib.import_module(n).__version__ for n in names}}
"""


@pytest.fixture
async def sup(settings: Settings, offline_index: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(settings) as running:
        yield running


def versions(dependencies: list[str], *names: str) -> dict[str, object]:
    return function_request(VERSIONS, args=list(names), dependencies=dependencies)


def env_dirs(sup: Supervisor) -> list[Path]:
    root = sup.settings.envs_dir
    return [p for p in root.glob("*") if not p.name.startswith(".")] if root.exists() else []


async def test_job_runs_in_its_env_and_stdout_shows_the_install(sup: Supervisor) -> None:
    response = await sup.run(versions(["tinypkg==1.0"], "tinypkg"))
    assert response.success, response.error
    (env,) = env_dirs(sup)
    assert response.json_result == {"python": str(env / "bin" / "python"), "tinypkg": "1.0"}
    assert "+ tinypkg==1.0" in (response.stdout or "")
    assert response.timings is not None and response.timings["env"] > 0

    again = await sup.run(versions(["TinyPkg == 1.0"], "tinypkg"))
    assert again.success and again.json_result == response.json_result
    assert "+ tinypkg" not in (again.stdout or "")  # a hit installs nothing
    assert again.timings is not None and again.timings["env"] < 50


async def test_install_output_streams_before_the_result(sup: Supervisor) -> None:
    items = [item async for item in sup.stream(versions(["tinydep"], "tinydep", "tinypkg"))]
    final = items[-1]
    assert isinstance(final, FunctionResponse) and final.success, final
    assert final.json_result is not None and final.json_result["tinypkg"] == "1.0"
    events = [item for item in items[:-1] if isinstance(item, LogEvent)]
    # uv's own lines are the job's log; what sandvisor says about the build is system.
    (installed,) = [event for event in events if "+ tinydep==1.0" in event.text]
    assert (installed.stream, installed.level) == ("log", "INFO")
    said = [event.text for event in events if event.stream == "system"]
    assert any(text.startswith("building environment") for text in said), said
    assert any(text.startswith("environment ") and "ready in" in text for text in said), said
    assert not any("+ tinydep" in text for text in said)
    (line,) = [line for line in (final.stdout or "").splitlines() if "+ tinydep==1.0" in line]
    assert line.strip() == "+ tinydep==1.0"  # as uv printed it


async def test_pin_overrides_the_base(sup: Supervisor) -> None:
    import six

    response = await sup.run(versions(["six==1.16.0"], "six"))
    assert response.success, response.error
    assert response.json_result is not None and response.json_result["six"] == "1.16.0"
    assert six.__version__ != "1.16.0"


async def test_base_satisfied_set_runs_on_the_base(sup: Supervisor) -> None:
    response = await sup.run(versions(["six", "msgpack>=1"], "six"))
    assert response.success, response.error
    assert response.json_result is not None
    assert response.json_result["python"] == sys.executable
    assert env_dirs(sup) == []


async def test_unknown_package_fails_with_uvs_message(sup: Supervisor) -> None:
    response = await sup.run(versions(["this-package-does-not-exist"]))
    assert not response.success
    assert response.error_type is ErrorType.DEPENDENCY_INSTALL
    assert response.error is not None
    assert response.error.startswith("dependency install failed: ")
    assert "No solution found" in response.error
    assert "this-package-does-not-exist" in response.error
    assert "this-package-does-not-exist" in (response.stdout or "")
    assert env_dirs(sup) == []


async def test_rejected_dependency_string_is_named(sup: Supervisor) -> None:
    response = await sup.run(versions(["tinypkg", "--extra-index-url=http://127.0.0.1:1/"]))
    assert not response.success
    assert response.error_type is ErrorType.INVALID_REQUEST
    assert response.error is not None
    assert "'--extra-index-url=http://127.0.0.1:1/'" in response.error
    assert "options are not accepted" in response.error


async def test_missing_system_package_is_named(sup: Supervisor) -> None:
    request = versions([]) | {"system_dependencies": ["sandvisor-no-such-package"]}
    response = await sup.run(request)
    assert not response.success
    assert response.error is not None and "sandvisor-no-such-package" in response.error


async def test_eight_concurrent_requests_for_one_new_set_build_once(sup: Supervisor) -> None:
    responses = await asyncio.gather(
        *(sup.run(versions(["tinydep", "six==1.16.0"], "tinypkg", "six")) for _ in range(8))
    )
    assert all(r.success for r in responses), [r.error for r in responses]
    assert all(r.json_result == responses[0].json_result for r in responses)
    assert sup.envs.builds_completed == 1
    assert len(env_dirs(sup)) == 1


async def test_cancel_during_the_build_stops_uv(
    settings: Settings, stalling: StallingIndex
) -> None:
    async with Supervisor(settings) as sup:
        job = asyncio.ensure_future(sup.run(versions(["tinypkg"]), job_id="building"))
        assert await asyncio.to_thread(stalling.wheel_requested.wait, 20)
        assert await sup.cancel("building")
        response = await job
        assert response.error_type is ErrorType.CANCELLED
        assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "uv"]
        assert env_dirs(sup) == []
        assert list((sup.settings.envs_dir / ".staging").iterdir()) == []


async def test_a_hung_install_is_bounded_by_the_job_timeout(
    settings: Settings, stalling: StallingIndex
) -> None:
    async with Supervisor(settings) as sup:
        response = await sup.run(versions(["tinypkg"]) | {"limits": {"timeout_s": 1}})
        assert response.error_type is ErrorType.TIMEOUT
        assert response.error is not None and "installing dependencies" in response.error
        assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "uv"]
        assert env_dirs(sup) == []
