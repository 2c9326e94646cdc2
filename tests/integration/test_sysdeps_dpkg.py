"""system_dependencies against the real dpkg: what is installed, and refusal when not allowed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.envs.sysdeps import SystemPackages, missing_packages
from sandvisor.supervisor.errors import EnvError
from sandvisor.supervisor.settings import Settings

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")


@needs_dpkg
async def test_installed_packages_are_not_missing() -> None:
    assert await missing_packages(["coreutils", "dpkg"]) == []
    assert await missing_packages(["coreutils", "sandvisor-no-such-package"]) == [
        "sandvisor-no-such-package"
    ]


@needs_dpkg
async def test_already_installed_needs_no_permission(tmp_path: Path) -> None:
    # Not allowed to install anything: packages already there pass, and nothing is installed.
    packages = SystemPackages(
        Settings.from_env(environ={}, home=tmp_path, allow_system_dependencies=False)
    )
    logged: list[str] = []
    await packages.ensure(["coreutils", "dpkg"], logged.append)
    assert logged == []


@needs_dpkg
async def test_missing_packages_fail_when_not_allowed(tmp_path: Path) -> None:
    packages = SystemPackages(
        Settings.from_env(environ={}, home=tmp_path, allow_system_dependencies=False)
    )
    with pytest.raises(EnvError) as caught:
        await packages.ensure(["coreutils", "sandvisor-no-such-package"], lambda line: None)
    assert caught.value.error_type is ErrorType.DEPENDENCY_INSTALL
    assert "sandvisor-no-such-package" in str(caught.value)
    assert "coreutils" not in str(caught.value)
    assert "SANDVISOR_ALLOW_SYSTEM_DEPENDENCIES" in str(caught.value)
