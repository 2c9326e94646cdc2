"""Fixtures shared by every test: a private store per test and a running Supervisor."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import pytest
from tests.helpers import make_settings
from tests.wheelhouse import UV_SOURCE_VARS, make_wheelhouse, uv_sources

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.settings import Settings

#: Where each test's tmp_path lies when the tests run as root (see ``tmp_path`` below).
JOB_REACHABLE_ROOT = Path(tempfile.gettempdir()) / "sandvisor-tests"


def pytest_configure(config: pytest.Config) -> None:
    """As root, supervisors run jobs as identities of the pool (the privilege model), which must
    read the interpreter and the runtime: where they lie under a dir closed to others (pyenv's
    Python under /root here), each dir on the way is made passable (search only, no listing).
    In the images the Dockerfiles set this up; without it every test would run its jobs as
    root (the fallback) and the real path would go untested."""
    if os.geteuid() != 0:
        return
    for path in (sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parent.parent)):
        for parent in [Path(path), *Path(path).parents]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test's own dir. As root, outside pytest's base dir: pytest keeps that closed to
    everyone else (and closes it again whenever another session starts), and a job identity
    must pass through it to the store a test makes there. Open to write (sticky, as /tmp is),
    so that jobs of tests may leave files there as they did when they ran as root."""
    name = re.sub(r"\W", "_", request.node.name)[:30]
    if os.geteuid() != 0:
        return tmp_path_factory.mktemp(name, numbered=True)
    JOB_REACHABLE_ROOT.mkdir(mode=0o711, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=JOB_REACHABLE_ROOT))
    path.chmod(0o1777)
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
async def supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    async with Supervisor(settings) as running:
        yield running


@pytest.fixture
async def spawn_supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    """A supervisor that starts a fresh interpreter per job (no templates)."""
    async with Supervisor(settings.model_copy(update={"templates": False})) as running:
        yield running


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every process a test starts is gone when it ends."""
    me = psutil.Process(os.getpid())
    before = {child.pid for child in me.children(recursive=True)}
    yield
    started = [child for child in me.children(recursive=True) if child.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=5)
    for process in alive:
        process.kill()
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny offline wheels: tinypkg 1.0 and 2.0, tinydep (needs tinypkg==1.0), six 1.16.0."""
    return make_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture
def offline_uv(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path | str], None]:
    """``offline_uv(source)``: for the rest of the test, uv installs come from ``source`` alone.

    ``source`` is a wheelhouse directory (uv's network off) or a local index URL. The store
    passes our ``UV_*`` variables to uv, so setting them here reaches every build of the test.
    This is the one place tests say where packages come from (see ``tests.wheelhouse``).
    """

    def use(source: Path | str) -> None:
        for name in UV_SOURCE_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in uv_sources(source).items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture
def offline_index(wheelhouse: Path, offline_uv: Callable[[Path | str], None]) -> Path:
    """Dependency installs come from the shared wheelhouse only."""
    offline_uv(wheelhouse)
    return wheelhouse
