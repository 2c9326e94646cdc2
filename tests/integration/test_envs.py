"""EnvStore with real uv and real venvs, offline: wheels built by the test, ``--no-index``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from tests.helpers import make_settings
from tests.integration.envs_helpers import StallingIndex, run_in
from tests.wheelhouse import UV_SOURCE_VARS, with_uv_sources

from sandvisor.cli.main import main as cli_main
from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.envs import EnvStore
from sandvisor.supervisor.errors import EnvError
from sandvisor.supervisor.settings import Settings


@pytest.fixture
def store_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def store(store_settings: Settings) -> EnvStore:
    return EnvStore(store_settings)


def leftovers(store: EnvStore) -> list[str]:
    return [p.name for d in (".staging", ".trash") for p in (store.root / d).glob("*")]


def uv_processes(root: psutil.Process | None = None) -> list[psutil.Process]:
    root = root or psutil.Process()
    return [p for p in root.children(recursive=True) if p.name() == "uv"]


async def wait_for(event_wait: object, timeout: float = 20.0) -> None:
    assert await asyncio.to_thread(event_wait, timeout)  # type: ignore[arg-type]


# -- layering, pins, base ------------------------------------------------------------------------


async def test_pin_overrides_base_and_runtime_imports_resolve(
    store: EnvStore, offline_index: Path
) -> None:
    lines: list[str] = []
    with await store.acquire(["tinypkg", "six==1.16.0"], lines.append) as lease:
        assert lease.key is not None and lease.built
        out = run_in(
            lease.python,
            "import sandvisor, cloudpickle, msgpack, six, tinypkg, sys;"
            "print(six.__version__, tinypkg.__version__, sys.prefix)",
        )
    assert out.split() == ["1.16.0", "2.0", str(store.root / lease.key)]
    import six

    assert six.__version__ != "1.16.0"  # the base keeps its own
    assert any("+ tinypkg==2.0" in line for line in lines)  # uv's output reached on_log


async def test_base_satisfied_set_makes_no_venv(store: EnvStore, offline_index: Path) -> None:
    lease = await store.acquire(["six", "Msgpack>=1", 'tinypkg; python_version < "3"'], print)
    assert lease.key is None
    assert lease.python == Path(sys.executable)
    assert store.list() == []
    assert not (store.root).exists() or not any(store.root.glob("[0-9a-f]*"))


async def test_partly_satisfied_set_installs_only_the_rest(
    store: EnvStore, offline_index: Path
) -> None:
    with await store.acquire(["six", "tinypkg==2.0"], print) as lease:
        (info,) = store.list()
        assert info.installed == ("tinypkg==2.0",)
        assert run_in(
            lease.python, "import six, tinypkg; print(six.__version__, tinypkg.__version__)"
        ) == (f"{__import__('six').__version__} 2.0")


async def test_same_set_in_another_order_is_one_env(store: EnvStore, offline_index: Path) -> None:
    first = await store.acquire(["tinypkg==1.0", "six==1.16.0"], print)
    second = await store.acquire(["Six == 1.16.0", "TinyPkg==1.0"], print)
    assert first.key == second.key and not second.built
    assert store.builds_completed == 1
    first.release()
    second.release()


async def test_lease_environ_puts_the_env_first(store: EnvStore, offline_index: Path) -> None:
    with await store.acquire(["tinypkg"], print) as lease:
        env = lease.environ({"PATH": "/usr/bin"})
    assert lease.prefix is not None
    assert env["VIRTUAL_ENV"] == str(lease.prefix)
    assert env["PATH"] == f"{lease.prefix / 'bin'}:/usr/bin"


async def test_direct_url_installs_when_allowed(tmp_path: Path, offline_index: Path) -> None:
    store = EnvStore(make_settings(tmp_path / "home", allow_direct_urls=True))
    wheel = offline_index / "tinypkg-2.0-py3-none-any.whl"
    with await store.acquire([f"tinypkg @ {wheel.as_uri()}"], print) as lease:
        assert run_in(lease.python, "import tinypkg; print(tinypkg.__version__)") == "2.0"


# -- failures ------------------------------------------------------------------------------------


async def test_unknown_package_fails_with_uvs_message(store: EnvStore, offline_index: Path) -> None:
    with pytest.raises(EnvError) as caught:
        await store.acquire(["this-package-does-not-exist"], print)
    assert caught.value.error_type is ErrorType.DEPENDENCY_INSTALL
    assert "No solution found" in str(caught.value)
    assert "this-package-does-not-exist" in str(caught.value)
    assert store.list() == [] and leftovers(store) == []
    assert list((store.root / ".locks").iterdir()) == []


@pytest.mark.parametrize(
    "text", ["--index-url=http://127.0.0.1:1/simple", "-e .", "tinypkg @ file:///tmp/x.whl"]
)
async def test_rejected_strings_run_nothing(
    store: EnvStore, offline_index: Path, text: str
) -> None:
    with pytest.raises(EnvError) as caught:
        await store.acquire(["tinypkg", text], print)
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    assert text in str(caught.value)
    assert not store.root.exists()


# -- one build per key ---------------------------------------------------------------------------


async def test_eight_concurrent_acquires_build_once(store: EnvStore, offline_index: Path) -> None:
    logs: list[list[str]] = [[] for _ in range(8)]
    leases = await asyncio.gather(
        *(store.acquire(["tinydep", "tinypkg==1.0"], log.append) for log in logs)
    )
    assert len({lease.key for lease in leases}) == 1
    assert store.builds_completed == 1
    assert sum(lease.built for lease in leases) == 8  # all waited on this process's build
    for log in logs:  # every waiter saw the one build's output, once
        assert sum(line.startswith("building environment") for line in log) == 1
    assert len(store.list()) == 1
    for lease in leases:
        lease.release()


BUILDER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pathlib import Path
    from sandvisor.supervisor.envs import EnvStore
    from sandvisor.supervisor.settings import Settings

    home, start, deps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    store = EnvStore(Settings.from_env(environ={}, home=home, gpus=""))
    store.base  # read the base before the start line, so all start together
    print("ready", flush=True)
    while not start.exists():
        time.sleep(0.01)
    lease = asyncio.run(store.acquire(deps, lambda line: None))
    print(json.dumps({"key": lease.key, "built": store.builds_completed}), flush=True)
    """
)


async def test_processes_sharing_a_store_build_once(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = StallingIndex(wheelhouse, delay_s=0.5)  # widens the window in which all contend
    with index.running():
        env = with_uv_sources(os.environ, index.url)
        start = tmp_path / "start"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", BUILDER, str(tmp_path / "home"), str(start), "tinypkg"],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            start.touch()
            results = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    assert len({r["key"] for r in results}) == 1
    assert sorted(r["built"] for r in results) == [0, 0, 1]


# -- killed builds -------------------------------------------------------------------------------


async def test_sigkill_of_uv_midbuild_then_clean_rebuild(
    store: EnvStore, stalling: StallingIndex
) -> None:
    building = asyncio.create_task(store.acquire(["tinypkg"], print))
    await wait_for(stalling.wheel_requested.wait)
    (uv,) = uv_processes()
    uv.send_signal(signal.SIGKILL)
    with pytest.raises(EnvError) as caught:
        await building
    assert caught.value.error_type is ErrorType.DEPENDENCY_INSTALL
    assert "killed by SIGKILL" in str(caught.value)
    assert store.list() == [] and leftovers(store) == []

    stalling.release()
    with await store.acquire(["tinypkg"], print) as lease:
        assert lease.built
        assert run_in(lease.python, "import tinypkg; print(tinypkg.__version__)") == "2.0"
    assert leftovers(store) == []


async def test_sigkill_of_the_builder_process_leaves_nothing_used(
    store: EnvStore, stalling: StallingIndex, tmp_path: Path
) -> None:
    start = tmp_path / "start"
    start.touch()
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(store.root.parent), str(start), "tinypkg"],
        stdout=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    try:
        await wait_for(stalling.wheel_requested.wait)
        (uv,) = uv_processes(psutil.Process(builder.pid))
        builder.kill()  # the supervisor dies; its uv lives on, orphaned, into the staging dir
        builder.wait()
        stalling.release()
        uv.wait(timeout=30)
    finally:
        builder.kill()
        builder.wait()
    assert store.list() == []  # the orphan finished its install, but nothing was published
    assert leftovers(store) != []

    with await store.acquire(["tinypkg"], print) as lease:
        assert lease.built
        assert run_in(lease.python, "import tinypkg; print(tinypkg.__version__)") == "2.0"
    assert leftovers(store) == []  # the dead build's debris went with the next build


async def test_cancelled_acquire_kills_uv_and_cleans_up(
    store: EnvStore, stalling: StallingIndex
) -> None:
    building = asyncio.create_task(store.acquire(["tinypkg"], print))
    await wait_for(stalling.wheel_requested.wait)
    assert len(uv_processes()) == 1
    building.cancel()
    with pytest.raises(asyncio.CancelledError):
        await building
    assert uv_processes() == []
    assert store.list() == [] and leftovers(store) == []


# -- GC and the CLI ------------------------------------------------------------------------------


async def test_gc_evicts_least_recently_used_never_in_use(
    tmp_path: Path, offline_index: Path
) -> None:
    store = EnvStore(make_settings(tmp_path / "home", env_max_count=2))
    a = await store.acquire(["tinypkg==1.0"], print)  # held all along: never evicted
    (await store.acquire(["tinypkg==2.0"], print)).release()
    c = await store.acquire(["six==1.16.0"], print)  # third env: GC evicts the LRU unused (2.0)
    assert {info.key for info in store.list()} == {a.key, c.key}
    c.release()

    a.release()
    os.utime(store.root / str(a.key) / "sandvisor-env.json", (1, 1))  # a is now the oldest
    b = await store.acquire(["tinypkg==2.0"], print)
    assert b.built
    assert {info.key for info in store.list()} == {b.key, c.key}
    b.release()


async def test_gc_by_size_and_manual_removal(tmp_path: Path, offline_index: Path) -> None:
    store = EnvStore(make_settings(tmp_path / "home", env_max_bytes=1))
    held = await store.acquire(["tinypkg==1.0"], print)
    (await store.acquire(["tinypkg==2.0"], print)).release()
    assert len(store.list()) == 2  # the env just built is spared by the GC that follows its build
    (removed,) = store.gc()  # over the size: everything not in use goes
    assert removed.requirements == ("tinypkg==2.0",)
    (info,) = store.list()
    assert info.key == held.key and info.in_use and info.size_bytes > 0
    assert store.gc() == []  # the only env left is in use
    with pytest.raises(EnvError, match="in use"):
        store.remove(str(held.key))
    held.release()
    assert store.remove(str(held.key)).key == held.key
    assert store.list() == [] and leftovers(store) == []
    store.gc()  # the lock files of keys that are gone go too
    assert [p.name for p in (store.root / ".locks").iterdir()] == ["gc.lock"]


async def test_envs_cli_list_gc_rm(
    store: EnvStore,
    offline_index: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SANDVISOR_HOME", str(store.root.parent))
    lease = await store.acquire(["tinypkg==1.0", "six==1.16.0"], print)
    capsys.readouterr()

    assert cli_main(["envs", "list", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["key"] == lease.key and row["in_use"] is True
    assert row["requirements"] == ["six==1.16.0", "tinypkg==1.0"]

    assert cli_main(["envs", "list"]) == 0
    assert str(lease.key) in capsys.readouterr().out

    assert cli_main(["envs", "rm", str(lease.key)]) == 1
    assert "in use" in capsys.readouterr().err
    lease.release()
    assert cli_main(["envs", "rm", str(lease.key)]) == 0
    assert cli_main(["envs", "gc"]) == 0
    assert store.list() == []


# -- the registry ---------------------------------------------------------------------------------


@pytest.mark.network
async def test_real_package_from_the_registry(
    store: EnvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in UV_SOURCE_VARS:
        monkeypatch.delenv(name, raising=False)
    with await store.acquire(["six==1.16.0"], print) as lease:
        assert run_in(lease.python, "import six; print(six.__version__, six.__file__)").startswith(
            f"1.16.0 {store.root / str(lease.key)}"
        )
