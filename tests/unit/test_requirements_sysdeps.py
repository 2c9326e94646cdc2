"""system_dependencies: Debian package name rules (dpkg itself: tests/integration)."""

from __future__ import annotations

import pytest

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.envs.sysdeps import (
    validate_names,
)
from sandvisor.supervisor.errors import EnvError


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
    with pytest.raises(EnvError) as caught:
        validate_names(["curl", name])
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    assert repr(name) in str(caught.value)
