"""sandvisor's own lines about a job carry its mark once: ``[sandvisor] `` in the output, the
``system`` stream in live events, and never a second ``sandvisor:`` of the message's own.

One row per kind of line sandvisor says about a job: an env build, a system package install
(apt-get stood in for by a script on PATH that answers as apt-get does, so nothing is
installed), an instance created.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, function_request, make_settings, streamed

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.events import SYSTEM_PREFIX, LogEvent
from sandvisor.supervisor.settings import Settings

CODE = "def main():\n    return 1\n"
MISSING_PACKAGE = "sandvisor-no-such-package"

# Answers `apt-get update` and `apt-get install ...` as apt-get does when all goes well.
FAKE_APT = """#!/bin/sh
echo "Reading package lists... Done"
exit 0
"""


def env_build(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Settings, dict[str, Any]]:
    request.getfixturevalue("offline_index")
    settings = make_settings(tmp_path / "home")
    return settings, function_request(CODE, dependencies=["tinypkg==1.0"])


def system_packages(
    tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Settings, dict[str, Any]]:
    if os.geteuid() != 0 or shutil.which("dpkg-query") is None:
        pytest.skip("system packages are installed as root, on Debian")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(FAKE_APT)
    apt.chmod(0o755)
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = make_settings(tmp_path / "home", allow_system_dependencies=True)
    return settings, function_request(CODE, system_dependencies=[MISSING_PACKAGE])


def instance(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Settings, dict[str, Any]]:
    code = "class Greeter:\n    def hello(self):\n        return 1\n"
    return make_settings(tmp_path / "home"), class_request("Greeter", code, "hello")


Scenario = Callable[[Path, pytest.FixtureRequest], tuple[Settings, dict[str, Any]]]


@pytest.mark.parametrize(
    ("scenario", "said"),
    [
        (env_build, "building environment"),
        (system_packages, f"installing system packages {MISSING_PACKAGE}"),
        (instance, "creating instance"),
    ],
    ids=["env_build", "system_packages", "instance"],
)
async def test_a_system_line_is_marked_once(
    tmp_path: Path, request: pytest.FixtureRequest, scenario: Scenario, said: str
) -> None:
    settings, job = scenario(tmp_path, request)
    async with Supervisor(settings) as sup:
        events, response = await streamed(sup, job)
    assert response.success, response.error
    system = [event for event in events if event.stream == "system"]
    assert any(said in event.text for event in system), [e.text for e in system]
    for event in system:
        assert not event.text.lower().startswith(("sandvisor", "[sandvisor]")), event.text
    ours = [line for line in (response.stdout or "").splitlines() if "sandvisor" in line.lower()]
    assert any(line.startswith(SYSTEM_PREFIX + said) for line in ours), ours
    for line in ours:
        rest = line.removeprefix(SYSTEM_PREFIX).lower()
        assert not rest.startswith(("sandvisor", "[sandvisor]")), line
    assert LogEvent("system", said, 0.0).as_output() == f"{SYSTEM_PREFIX}{said}\n"
