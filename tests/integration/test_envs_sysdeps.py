"""system_dependencies installed for real with apt-get, through ``Supervisor.run``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import function_request, make_settings

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.envs.sysdeps import missing_packages

PACKAGE = "hello"  # GNU hello: 53 kB, depends only on libc6

RUN_HELLO = """
def main():
    import subprocess
    return subprocess.run(["hello"], capture_output=True, text=True, check=True).stdout
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("apt-get") is None, reason="needs root on Debian"
)


@pytest.fixture
def absent_package() -> Iterator[str]:
    """PACKAGE not installed before the test, and removed again after it."""
    if not asyncio.run(missing_packages([PACKAGE])):
        pytest.skip(f"{PACKAGE} is already installed here")
    yield PACKAGE
    subprocess.run(
        ["apt-get", "purge", "-y", "-q", PACKAGE],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        capture_output=True,
        check=False,
        timeout=120,
    )


async def test_refused_unless_enabled(tmp_path: Path, absent_package: str) -> None:
    async with Supervisor(make_settings(tmp_path / "home")) as sup:
        response = await sup.run(
            function_request(RUN_HELLO, system_dependencies=[absent_package, "coreutils"])
        )
    assert response.error_type is ErrorType.DEPENDENCY_INSTALL
    assert response.error is not None
    assert f"system_dependencies not installed: {absent_package} (" in response.error


@pytest.mark.network
async def test_installed_with_apt_when_enabled(tmp_path: Path, absent_package: str) -> None:
    settings = make_settings(tmp_path / "home", allow_system_dependencies=True)
    async with Supervisor(settings) as sup:
        response = await sup.run(
            function_request(RUN_HELLO, system_dependencies=[absent_package, "coreutils"])
        )
        assert response.success, response.error
        assert response.json_result == "Hello, world!\n"
        assert f"installing system packages {absent_package}" in (response.stdout or "")

        again = await sup.run(function_request(RUN_HELLO, system_dependencies=[absent_package]))
        assert again.success and "installing" not in (again.stdout or "")
