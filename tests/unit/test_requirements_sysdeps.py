"""system_dependencies: Debian name rules, dpkg lookups, and refusal when not allowed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.sysdeps import (
    SystemDependencyError,
    SystemPackages,
    missing_packages,
    validate_names,
)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")


def test_valid_names_pass_deduplicated() -> None:
    assert validate_names(["libgl1", "g++", "libc6:amd64", "libgl1", "python3.11"]) == [
        "libgl1",
        "g++",
        "libc6:amd64",
        "python3.11",
    ]


@pytest.mark.parametrize(
    "name", ["-o", "--allow-unauthenticated", "Foo", "a", "pkg name", "pkg;rm", "pkg/1", ""]
)
def test_invalid_names_are_named_in_the_error(name: str) -> None:
    with pytest.raises(SystemDependencyError) as caught:
        validate_names(["curl", name])
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    assert repr(name) in str(caught.value)


@needs_dpkg
async def test_installed_packages_are_not_missing() -> None:
    assert await missing_packages(["coreutils", "dpkg"]) == []
    assert await missing_packages(["coreutils", "sandvisor-no-such-package"]) == [
        "sandvisor-no-such-package"
    ]


@needs_dpkg
async def test_already_installed_needs_no_permission(tmp_path: Path) -> None:
    packages = SystemPackages(Settings.from_env(environ={}, home=tmp_path))
    await packages.ensure(["coreutils"], lambda line: None)


@needs_dpkg
async def test_missing_packages_fail_when_not_allowed(tmp_path: Path) -> None:
    packages = SystemPackages(
        Settings.from_env(environ={}, home=tmp_path, allow_system_dependencies=False)
    )
    with pytest.raises(SystemDependencyError) as caught:
        await packages.ensure(["coreutils", "sandvisor-no-such-package"], lambda line: None)
    assert caught.value.error_type is ErrorType.DEPENDENCY_INSTALL
    assert "sandvisor-no-such-package" in str(caught.value)
    assert "coreutils" not in str(caught.value)
    assert "SANDVISOR_ALLOW_SYSTEM_DEPENDENCIES" in str(caught.value)
