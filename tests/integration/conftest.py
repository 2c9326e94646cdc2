"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers import make_settings
from tests.integration.envs_helpers import StallingIndex

from sandvisor.worker import host as hosting


@pytest.fixture
def stalling(wheelhouse: Path, offline_uv: Callable[[Path | str], None]) -> Iterator[StallingIndex]:
    """An index that holds back its wheel until released: a build that can be caught midway."""
    index = StallingIndex(wheelhouse)
    with index.running():
        offline_uv(index.url)
        yield index


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[hosting.SupervisorHost]:
    """The queue handler's process-wide host, on a private store, without RunPod's job API (so
    no progress updates); closed at the end."""
    monkeypatch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
    running = hosting.SupervisorHost(make_settings(tmp_path / "home"))
    monkeypatch.setattr(hosting, "_host", running)
    yield running
    running.close()
