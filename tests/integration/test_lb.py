"""The load-balanced (HTTP) worker, served by uvicorn on 127.0.0.1 inside the test's loop, called
with runpod-flash's own LoadBalancerSlsStub (the real client) and with plain HTTP (httpx).

The worker is resource ``api`` of the app in ``tests/flash_app.py``: it unpacks the app's build
artifact at start, serves ``/ping``, ``/execute`` and the routes the manifest gives ``api``'s
functions, and forwards functions of ``gpu_worker`` to that endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest
from runpod_flash.protos.remote_execution import FunctionRequest as FlashRequest
from runpod_flash.protos.remote_execution import FunctionResponse as FlashResponse
from runpod_flash.runtime.serialization import serialize_arg, serialize_args
from runpod_flash.stubs.live_serverless import LiveServerlessStub
from runpod_flash.stubs.load_balancer_sls import LoadBalancerSlsStub
from tests.flash_app import flash_environ, make_artifact, manifest_for
from tests.helpers import eventually, make_settings
from tests.servers import FakeQueueEndpoint, FakeStateManager, serving
from tests.unit.test_artifact import add_file
from tests.unit.test_artifact import make_artifact as make_tar

from sandvisor.protocol.models import ErrorType
from sandvisor.worker import lb as lb_module
from sandvisor.worker.lb import LbWorker, create_app
from sandvisor.worker.routing import Router
from sandvisor.worker.state_manager import EndpointDirectory

pytestmark = pytest.mark.compat


@contextlib.asynccontextmanager
async def lb_worker(
    tmp: Path, environ: dict[str, str], concurrency: int = 2, **settings: Any
) -> AsyncIterator[tuple[str, LbWorker]]:
    # No runpod preload (a Flash deployment's default): it costs every start 2.6 s here.
    values = {"app_dir": tmp / "app", "flash_preload": []} | settings
    app = create_app(make_settings(tmp / "home", **values), environ, concurrency)
    async with serving(app) as url:
        worker: LbWorker = app.state.worker
        assert await eventually(worker.ready.is_set, 60), "the worker did not warm up"
        yield url, worker


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, LbWorker]]:
    environ = flash_environ("api", make_artifact(tmp_path))
    async with lb_worker(tmp_path, environ, timeout_s=20.0) as served:
        yield served


def stub_for(url: str) -> LoadBalancerSlsStub:
    return LoadBalancerSlsStub(SimpleNamespace(name="api", endpoint_url=url), timeout=60)


def mean(values):
    print(f"{len(values)} values")
    return sum(values) / len(values)


def broken(reason):
    raise KeyError(reason)


def add(a, b):
    """The client's view of the deployed ``add`` route (runpod-flash's @remote sets this)."""


add.__remote_config__ = {"method": "POST", "path": "/add"}  # type: ignore[attr-defined]


async def test_ping_is_204_while_warming_then_200(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    real = lb_module.DeployedApp.prepare

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(lb_module.DeployedApp, "prepare", held)
    app = create_app(make_settings(tmp_path / "home", app_dir=tmp_path / "app"), {}, 1)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        try:
            assert (await client.get("/ping")).status_code == 204
        finally:
            release.set()  # a stop waits for the warm-up
        assert await eventually(app.state.worker.ready.is_set, 60)
        pong = await client.get("/ping")
        assert (pong.status_code, pong.json()) == (200, {"status": "healthy"})


async def test_execute_through_runpod_flash_stub(api: tuple[str, LbWorker]) -> None:
    url, _ = api
    assert await stub_for(url)(mean, None, None, True, [1, 2, 3, 6]) == 3
    with pytest.raises(Exception, match=r"Remote execution failed: KeyError: 'gone'"):
        await stub_for(url)(broken, None, None, True, "gone")


async def test_execute_takes_a_bare_or_wrapped_request(api: tuple[str, LbWorker]) -> None:
    url, _ = api
    request = FlashRequest(
        function_name="mean",
        function_code=inspect.getsource(mean),
        args=serialize_args(([2, 4],)),
    ).model_dump(exclude_none=True)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for body in (request, {"input": request}):
            answer = await client.post("/execute", json=body)
            assert answer.status_code == 200
            assert answer.json()["result"] == serialize_arg(3.0)
            assert answer.json()["stdout"] == "2 values\n"
        invalid = await client.post("/execute", json={"function_code": "x = 1"})
        assert invalid.status_code == 200 and invalid.json()["error_type"] == "invalid_request"
        not_json = await client.post("/execute", content=b"{nope")
        assert not_json.status_code == 400
        assert not_json.json()["error"].startswith("invalid request: the body is not JSON")


async def test_a_deployed_function_runs_through_execute(api: tuple[str, LbWorker]) -> None:
    url, _ = api
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        answer = await client.post(
            "/execute",
            json={"function_name": "add", "args": [2, 5], "serialization_format": "json"},
        )
    assert answer.json() == {"success": True, "json_result": 7, "stdout": "adding 2 and 5\n"} | {
        "timings": answer.json()["timings"]
    }


async def test_manifest_routes_through_runpod_flash_stub(
    api: tuple[str, LbWorker], capfd: pytest.CaptureFixture[str]
) -> None:
    url, worker = api
    assert sorted(worker.routes) == [
        ("GET", "/hello/{name}", "hello"),
        ("POST", "/add", "add"),
        ("POST", "/fail", "fail"),
        ("POST", "/sleep", "sleepy"),
    ]
    assert await stub_for(url)(add, None, None, True, 20, b=22) == 42
    _, err = capfd.readouterr()
    assert "adding 20 and 22" in err  # the job's output, in the worker's log, as on the queue


async def test_routes_over_plain_http(api: tuple[str, LbWorker]) -> None:
    url, _ = api
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        hello = await client.get("/hello/bob", params={"greeting": "hi"})
        assert (hello.status_code, hello.json()) == (200, {"message": "hi, bob"})
        failed = await client.post("/fail", json={"reason": "on purpose"})
        assert failed.status_code == 500
        assert failed.json()["error_type"] == "user_exception"
        assert failed.json()["error"].startswith("RuntimeError: route failed: on purpose")
        for bad in (b"[1, 2]", b"{nope"):
            refused = await client.post("/add", content=bad)
            assert refused.status_code == 400
            assert refused.json()["error_type"] == "invalid_request"
        assert (await client.post("/nowhere", json={})).status_code == 404
        for unfit in ({"a": 1}, {"a": 1, "b": 2, "c": 3}):
            refused = await client.post("/add", json=unfit)
            assert refused.status_code == 422
            assert refused.json()["error"].startswith("TypeError: add() ")


async def test_a_route_answers_input_it_cannot_take_with_an_error_body(
    api: tuple[str, LbWorker],
) -> None:
    """F35: no bare 500. A NaN result fails the job (strict JSON); a body Python's json cannot
    read, or one the child cannot be sent, is 400; one over the limit 413."""
    url, worker = api
    deep = b"[" * 5000 + b"]" * 5000
    long_int = b'{"a": 1' + b"0" * 5000 + b', "b": 1}'
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        nan = await client.post("/add", content=b'{"a": NaN, "b": 1}')
        assert nan.status_code == 500, nan.text
        assert nan.json()["error"].startswith("result is not JSON-serializable (it holds NaN")
        for bad in (deep, long_int, b'{"a": "\\ud800", "b": "x"}'):
            refused = await client.post("/add", content=bad)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error_type"] == "invalid_request"
            assert refused.json()["error"].startswith("invalid request: ")
        worker.settings = worker.settings.model_copy(update={"max_request_bytes": 64})
        big = await client.post("/add", json={"a": "x" * 100, "b": "y"})
        assert big.status_code == 413, big.text
        assert "over the limit of 64 bytes (SANDVISOR_MAX_REQUEST_BYTES)" in big.json()["error"]
        assert (await client.post("/add", json={"a": 1, "b": 2})).json() == 3


async def test_a_route_that_times_out_is_504(tmp_path: Path) -> None:
    environ = flash_environ("api", make_artifact(tmp_path))
    async with (
        lb_worker(tmp_path, environ, timeout_s=1.0) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        answer = await client.post("/sleep", json={"seconds": 60})
    assert answer.status_code == 504
    assert answer.json()["error_type"] == "timeout"
    assert answer.json()["stdout"] == "sleeping\n"


async def test_a_client_that_leaves_cancels_its_job(api: tuple[str, LbWorker]) -> None:
    url, worker = api
    assert worker.supervisor is not None
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        call = asyncio.ensure_future(client.post("/sleep", json={"seconds": 60}))
        assert await eventually(lambda: bool(worker.supervisor.running_jobs), 30)
        me = psutil.Process()
        sleepers = [p for p in me.children(recursive=True) if p.name().startswith("sv-")]
        assert sleepers, "the job's process was not found"
        call.cancel()  # closes the connection
        await asyncio.gather(call, return_exceptions=True)
    assert await eventually(lambda: not worker.supervisor.running_jobs, 30)
    assert await eventually(lambda: not any(p.is_running() for p in sleepers), 10)


async def test_jobs_beyond_the_concurrency_wait_their_turn(tmp_path: Path) -> None:
    environ = flash_environ("api", make_artifact(tmp_path))
    async with (
        lb_worker(tmp_path, environ, concurrency=1) as (url, worker),
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        assert worker.supervisor is not None
        sleeper = asyncio.ensure_future(client.post("/sleep", json={"seconds": 60}))
        assert await eventually(lambda: len(worker.supervisor.running_jobs) == 1, 30)
        adder = asyncio.ensure_future(client.post("/add", json={"a": 1, "b": 1}))
        assert await eventually(lambda: worker.slots.locked() and not adder.done(), 5)
        assert len(worker.supervisor.running_jobs) == 1  # the second one waits for the slot
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
        assert (await adder).json() == 2


async def test_a_hostile_artifact_is_an_answer_not_a_crash(tmp_path: Path) -> None:
    hostile = make_tar(tmp_path / "bad.tgz", lambda tar: add_file(tar, "../escape.py"))
    async with (
        lb_worker(tmp_path, flash_environ("api", hostile)) as (url, worker),
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        assert (await client.get("/ping")).status_code == 200  # up, not in a crash loop
        assert worker.routes == []
        for _ in range(2):  # every answer says why
            answer = (await client.post("/execute", json={"function_name": "add"})).json()
            assert answer["success"] is False and answer["error_type"] == "deployment"
            assert answer["error"].startswith(
                "deployed app unavailable: cannot unpack the build artifact"
            )
            assert "unsafe member '../escape.py': a path outside the app dir" in answer["error"]
    assert not (tmp_path / "escape.py").exists()


async def test_another_resources_function_is_forwarded(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path)
    stub = LiveServerlessStub(server=None)

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        return {"success": True, "result": serialize_arg(f"embedded by {request['function_name']}")}

    queue = FakeQueueEndpoint(answer)
    async with serving(queue.app()) as queue_url:
        manifest = manifest_for(tmp_path / "build") | {
            "resources_endpoints": {"gpu_worker": queue_url}
        }
        state = FakeStateManager(manifest)
        async with serving(state.app()) as state_url:
            environ = flash_environ(
                "api",
                artifact,
                RUNPOD_API_KEY="k",
                FLASH_ENVIRONMENT_ID="env-1",
                RUNPOD_API_BASE_URL=state_url,
            )
            async with (
                lb_worker(tmp_path, environ) as (url, _),
                httpx.AsyncClient(base_url=url, timeout=60) as client,
            ):
                request = FlashRequest(function_name="embed", args=serialize_args(("x",)))
                body = (
                    await client.post("/execute", json=request.model_dump(exclude_none=True))
                ).json()
    assert stub.handle_response(FlashResponse(**body)) == "embedded by embed"
    assert [job["input"]["function_name"] for job in queue.jobs] == ["embed"]
    assert queue.authorizations == ["Bearer k"]


async def test_a_queue_worker_forwards_to_a_real_lb_worker(
    tmp_path: Path, api: tuple[str, LbWorker]
) -> None:
    """gpu_worker's router sends ``add`` and ``fail`` to this sandvisor's routes."""
    url, _ = api
    directory = EndpointDirectory(None, fallback={"api": url})
    router = Router(tmp_path / "app", "gpu_worker", directory)
    added = await router.route(
        {"function_name": "add", "kwargs": {"a": 1, "b": 2}, "serialization_format": "json"}
    )
    assert added is not None and (added.success, added.json_result) == (True, 3)
    failed = await router.route(
        {"function_name": "fail", "kwargs": {"reason": "x"}, "serialization_format": "json"}
    )
    assert failed is not None and failed.error_type is ErrorType.USER_EXCEPTION
    assert (failed.error or "").startswith("RuntimeError: route failed: x")
