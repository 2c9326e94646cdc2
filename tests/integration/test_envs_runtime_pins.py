"""A job's env keeps the child runtime's cloudpickle and msgpack usable, offline with real uv.

The wheelhouse adds an old fake ``cloudpickle 2.2.1``, the installed cloudpickle rewheeled as it
is, and ``tinyold``: 2.0 caps cloudpickle below 3 (what a stale library does), 1.0 does not.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tests.helpers import function_request
from tests.integration.envs_helpers import run_in
from tests.wheelhouse import build_wheel, make_wheelhouse, repack_installed

from sandvisor.protocol.codec import decode_value, encode_value
from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.envs import EnvStore
from sandvisor.supervisor.envs.runtime_pins import runtime_pins
from sandvisor.supervisor.errors import EnvError
from sandvisor.supervisor.settings import Settings

CLOUDPICKLE = importlib.metadata.version("cloudpickle")
(PIN,) = (pin for pin in runtime_pins() if pin.name == "cloudpickle")

VERSIONS = """
def main(offset):
    import cloudpickle, tinyold
    return {"tinyold": tinyold.__version__, "cloudpickle": cloudpickle.__version__,
            "from": cloudpickle.__file__, "answer": offset(41)}
"""


@pytest.fixture(scope="module")
def runtime_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = make_wheelhouse(tmp_path_factory.mktemp("runtime-wheelhouse"))
    build_wheel(directory, "cloudpickle", "2.2.1")
    build_wheel(directory, "tinyold", "1.0", requires=["cloudpickle"])
    build_wheel(directory, "tinyold", "2.0", requires=["cloudpickle<3"])
    repack_installed(directory, "cloudpickle")
    return directory


@pytest.fixture
def runtime_index(runtime_wheelhouse: Path, offline_uv: Callable[[Path | str], None]) -> Path:
    offline_uv(runtime_wheelhouse)
    return runtime_wheelhouse


@pytest.fixture
def store(settings: Settings, runtime_index: Path) -> EnvStore:
    return EnvStore(settings)


@pytest.fixture
async def sup(settings: Settings, runtime_index: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(settings) as running:
        yield running


def refusal(spec: str) -> str:
    needs = f"{PIN.spec}, which the sandvisor runtime needs ({PIN.why})"
    return f"dependency {spec!r} rejected: conflicts with {needs}"


async def test_a_pin_outside_the_runtimes_range_is_refused_before_uv(store: EnvStore) -> None:
    with pytest.raises(EnvError) as caught:
        await store.acquire(["tinypkg", "CloudPickle == 2.2.1"], print)
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    assert str(caught.value) == refusal("cloudpickle==2.2.1")
    assert not store.root.exists()  # nothing was built, not even a staging dir


async def test_a_conflict_through_another_package_fails_resolution_saying_so(
    store: EnvStore,
) -> None:
    with pytest.raises(EnvError) as caught:
        await store.acquire(["tinyold==2.0"], print)
    assert caught.value.error_type is ErrorType.DEPENDENCY_INSTALL
    first, _, detail = str(caught.value).partition("\n")
    assert first == (
        f"the dependencies conflict with what the sandvisor runtime needs: {PIN.spec} ({PIN.why})"
    )
    assert "No solution found" in detail and "tinyold" in detail  # uv's own derivation follows
    assert store.list() == []


async def test_an_unpinned_mention_resolves_to_a_compatible_version(store: EnvStore) -> None:
    # Unconstrained, uv takes the newest tinyold and the old cloudpickle it caps to.
    with await store.acquire(["tinyold", "cloudpickle"], print) as lease:
        assert lease.key is not None and lease.built
        out = run_in(
            lease.python,
            "import sandvisor.sandbox_child.runner, cloudpickle, tinyold;"
            "print(tinyold.__version__, cloudpickle.__version__, cloudpickle.__file__)",
        )
        tinyold, cloudpickle, where = out.split()
        assert (tinyold, cloudpickle) == ("1.0", CLOUDPICKLE)
        assert Path(where).is_relative_to(store.root / lease.key)  # uv's pick, not the base's
        constraints = (store.root / lease.key / "sandvisor-constraints.txt").read_text()
        assert {pin.spec for pin in runtime_pins()} <= set(constraints.splitlines())

        again = await store.acquire(["TinyOld", "cloudpickle", "tinyold"], print)
        with again:
            assert again.key == lease.key and not again.built
    assert store.builds_completed == 1


async def test_conflicts_fail_clearly_and_the_worker_keeps_working(sup: Supervisor) -> None:
    refused = await sup.run(function_request(VERSIONS, dependencies=["cloudpickle<3"]))
    assert not refused.success and refused.error_type is ErrorType.INVALID_REQUEST
    assert refused.error is not None
    assert refused.error.splitlines()[0] == f"invalid request: {refusal('cloudpickle<3')}"

    unsolvable = await sup.run(function_request(VERSIONS, dependencies=["tinyold>=2"]))
    assert not unsolvable.success and unsolvable.error_type is ErrorType.DEPENDENCY_INSTALL
    assert unsolvable.error is not None
    assert unsolvable.error.splitlines()[0] == (
        "dependency install failed: the dependencies conflict with what the sandvisor runtime"
        f" needs: {PIN.spec} ({PIN.why})"
    )

    # Arguments and the result travel as cloudpickle, through the env's own cloudpickle.
    request = function_request(
        VERSIONS,
        dependencies=["tinyold", "cloudpickle"],
        serialization_format="cloudpickle",
        args=[encode_value(lambda n: n + 1)],
    )
    response = await sup.run(request)
    assert response.success, response.error
    result = decode_value(response.result, "result")
    assert result["answer"] == 42
    assert (result["tinyold"], result["cloudpickle"]) == ("1.0", CLOUDPICKLE)
    assert Path(result["from"]).is_relative_to(sup.settings.envs_dir)
