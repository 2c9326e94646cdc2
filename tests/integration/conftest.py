"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.envs_helpers import StallingIndex


@pytest.fixture
def stalling(wheelhouse: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StallingIndex]:
    """An index that holds back its wheel until released: a build that can be caught midway."""
    index = StallingIndex(wheelhouse)
    with index.running():
        monkeypatch.setenv("UV_FIND_LINKS", index.url)
        monkeypatch.setenv("UV_NO_INDEX", "1")
        yield index
