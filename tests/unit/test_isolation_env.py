"""replace_environment: the environment ends exactly as asked, whatever it was before."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sandvisor.sandbox_child.isolation import replace_environment


@pytest.fixture
def saved_environment() -> Iterator[dict[str, str]]:
    saved = dict(os.environ)
    yield saved
    replace_environment(saved)


def test_environment_becomes_exactly_the_one_asked_for(saved_environment: dict[str, str]) -> None:
    wanted = dict(saved_environment)
    wanted.pop(next(iter(wanted)))  # one removed
    wanted["SANDVISOR_TEST_ADDED"] = "new"  # one added
    changed = next(name for name in wanted if name != "SANDVISOR_TEST_ADDED")
    wanted[changed] = wanted[changed] + "-changed"  # one changed
    replace_environment(wanted)
    assert dict(os.environ) == wanted
    assert os.getenv("SANDVISOR_TEST_ADDED") == "new"  # the C environment too, not only the dict


def test_an_empty_environment_empties_it(saved_environment: dict[str, str]) -> None:
    replace_environment({})
    assert dict(os.environ) == {}
