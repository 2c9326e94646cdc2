"""Fixtures the chaos tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.helpers import make_settings

from sandvisor.supervisor.core import Supervisor


@pytest.fixture(params=["template", "spawn"])
async def identity_sup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Supervisor]:
    """A supervisor whose jobs run as identities (root only: the caller skips otherwise),
    forked from templates or spawned, sampled every 50 ms."""
    settings = make_settings(
        tmp_path / "home", templates=request.param == "template", watch_interval_s=0.05
    )
    async with Supervisor(settings) as running:
        assert running.privilege.switching, running.privilege.reason
        yield running
