"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.integration.envs_helpers import StallingIndex


@pytest.fixture
def stalling(wheelhouse: Path, offline_uv: Callable[[Path | str], None]) -> Iterator[StallingIndex]:
    """An index that holds back its wheel until released: a build that can be caught midway."""
    index = StallingIndex(wheelhouse)
    with index.running():
        offline_uv(index.url)
        yield index
