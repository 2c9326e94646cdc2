"""Cross-endpoint routing against local fakes of RunPod's State Manager and of other endpoints.

The router reads the app's manifest (written by runpod-flash's ManifestBuilder), asks the fake
State Manager (GraphQL, as runpod-flash's StateManagerClient asks it) where the other resources
live, and forwards: queue targets through ``/runsync``, load-balanced ones through their route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from runpod_flash.protos.remote_execution import FunctionRequest as FlashRequest
from runpod_flash.protos.remote_execution import FunctionResponse as FlashResponse
from runpod_flash.runtime.serialization import serialize_arg, serialize_args
from runpod_flash.stubs.live_serverless import LiveServerlessStub
from tests.flash_app import manifest_for, write_build_dir
from tests.servers import FakeQueueEndpoint, FakeStateManager, dead_url, serving

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.errors import RoutingError
from sandvisor.worker.routing import Router
from sandvisor.worker.state_manager import EndpointDirectory, StateManagerConfig

KEY = "rp-test-key"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def embed_answer(request: dict[str, Any]) -> dict[str, Any]:
    """What the gpu_worker endpoint's sandvisor would answer for ``embed``."""
    if request.get("function_name") == "boom":
        return {"success": False, "error": "ValueError: boom: x", "error_type": "user_exception"}
    return {"success": True, "result": serialize_arg({"length": 2}), "stdout": "embedding\n"}


def lb_target() -> FastAPI:
    """The ``api`` resource's routes, as any Flash LB endpoint serves them."""
    app = FastAPI()

    @app.post("/add")
    async def add(body: dict[str, Any]) -> Any:
        return body["a"] + body["b"]

    return app


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_build_dir(tmp_path / "app")


@pytest.fixture
async def world(app_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """The State Manager, a queue endpoint (gpu_worker) and an LB endpoint (api), all local."""
    queue = FakeQueueEndpoint(embed_answer)
    async with serving(queue.app()) as queue_url, serving(lb_target()) as lb_url:
        manifest = manifest_for(app_dir) | {
            "resources_endpoints": {"gpu_worker": queue_url, "api": lb_url}
        }
        state = FakeStateManager(manifest)
        async with serving(state.app()) as state_url:
            yield {"queue": queue, "state": state, "state_url": state_url}


def router(app_dir: Path, resource: str, state_url: str, clock: Clock | None = None) -> Router:
    config = StateManagerConfig(f"{state_url}/graphql", KEY, "env-1")
    directory = EndpointDirectory(config, ttl_s=300, clock=clock or Clock())
    return Router(app_dir, resource, directory, api_key=KEY, poll_s=0)


async def test_a_queue_function_goes_to_runsync_with_the_key(app_dir: Path, world) -> None:
    stub = LiveServerlessStub(server=None)
    request = FlashRequest(function_name="embed", args=serialize_args(("hi",)))
    response = await router(app_dir, "api", world["state_url"]).route(
        request.model_dump(exclude_none=True)
    )
    assert response is not None and response.success
    assert stub.handle_response(FlashResponse(**response.to_wire())) == {"length": 2}
    [job] = world["queue"].jobs
    assert job["input"]["function_name"] == "embed" and "function_code" not in job["input"]
    assert world["queue"].authorizations == [f"Bearer {KEY}"]
    assert world["state"].authorizations == [f"Bearer {KEY}"] * 2  # environment, then build


async def test_a_failed_remote_job_comes_back_as_its_failure(app_dir: Path, world) -> None:
    response = await router(app_dir, "api", world["state_url"]).route({"function_name": "boom"})
    assert response is not None and not response.success
    assert response.error == "ValueError: boom: x"
    assert response.error_type is ErrorType.USER_EXCEPTION


async def test_a_queued_job_is_followed_to_its_end(app_dir: Path, world) -> None:
    world["queue"].queued = True
    response = await router(app_dir, "api", world["state_url"]).route({"function_name": "embed"})
    assert response is not None and response.success and response.stdout == "embedding\n"


async def test_an_lb_function_goes_to_its_route(app_dir: Path, world) -> None:
    response = await router(app_dir, "gpu_worker", world["state_url"]).route(
        {"function_name": "add", "kwargs": {"a": 2, "b": 3}, "serialization_format": "json"}
    )
    assert response == FunctionResponse(success=True, json_result=5)


async def test_an_lb_function_needs_json_arguments(app_dir: Path, world) -> None:
    response = await router(app_dir, "gpu_worker", world["state_url"]).route(
        {"function_name": "add", "args": serialize_args((2, 3))}
    )
    assert response is not None and response.error_type is ErrorType.INVALID_REQUEST
    assert "serialization_format 'json'" in (response.error or "")


async def test_own_functions_and_requests_with_code_run_here(app_dir: Path, world) -> None:
    routing = router(app_dir, "api", world["state_url"])
    assert await routing.route({"function_name": "add"}) is None  # api's own
    assert (
        await routing.route({"function_name": "embed", "function_code": "def embed(): 1"}) is None
    )
    assert await routing.route({"function_name": "not_in_the_app"}) is None  # local lookup says
    assert await routing.route({"no": "function"}) is None  # the supervisor says what is wrong
    assert world["state"].calls == []  # nothing needed the State Manager


async def test_endpoints_are_cached_for_the_ttl(app_dir: Path, world) -> None:
    clock = Clock()
    routing = router(app_dir, "api", world["state_url"], clock)
    for _ in range(3):
        assert (await routing.route({"function_name": "embed"})).success  # type: ignore[union-attr]
    assert routing.directory.refreshes == 1
    clock.now += 299
    await routing.route({"function_name": "embed"})
    assert routing.directory.refreshes == 1
    clock.now += 1
    await routing.route({"function_name": "embed"})
    assert routing.directory.refreshes == 2


async def test_known_endpoints_outlive_a_state_manager_outage(app_dir: Path, world) -> None:
    clock = Clock()
    routing = router(app_dir, "api", world["state_url"], clock)
    await routing.route({"function_name": "embed"})
    world["state"].failing = True
    clock.now += 301
    response = await routing.route({"function_name": "embed"})
    assert response is not None and response.success
    assert len(world["queue"].jobs) == 2


async def test_an_unreachable_state_manager_is_said_in_one_line(app_dir: Path) -> None:
    response = await router(app_dir, "api", dead_url()).route({"function_name": "embed"})
    assert response is not None and response.error_type is ErrorType.ROUTING
    assert response.error is not None and "\n" not in response.error
    assert response.error.startswith("routing failed: the State Manager at http://127.0.0.1:")
    assert "unreachable (ConnectError" in response.error


async def test_a_failing_state_manager_is_said_in_one_line(app_dir: Path, world) -> None:
    world["state"].failing = True
    response = await router(app_dir, "api", world["state_url"]).route({"function_name": "embed"})
    assert response is not None and response.error_type is ErrorType.ROUTING
    assert response.error == "routing failed: the State Manager answered 500: internal error"


async def test_an_unreachable_target_is_said_in_one_line(app_dir: Path) -> None:
    manifest = manifest_for(app_dir) | {"resources_endpoints": {"gpu_worker": dead_url()}}
    state = FakeStateManager(manifest)
    async with serving(state.app()) as state_url:
        response = await router(app_dir, "api", state_url).route({"function_name": "embed"})
    assert response is not None and response.error_type is ErrorType.ROUTING
    assert response.error is not None and "\n" not in response.error
    assert response.error.startswith("routing failed: cannot reach resource 'gpu_worker' (")


async def test_a_target_the_state_manager_does_not_list(app_dir: Path) -> None:
    state = FakeStateManager(manifest_for(app_dir) | {"resources_endpoints": {}})
    async with serving(state.app()) as state_url:
        response = await router(app_dir, "api", state_url).route({"function_name": "embed"})
    assert response is not None and response.error_type is ErrorType.ROUTING
    assert "lists no endpoint for resource 'gpu_worker'" in (response.error or "")


async def test_without_a_state_manager_the_manifest_endpoints_are_used(app_dir: Path) -> None:
    queue = FakeQueueEndpoint(embed_answer)
    async with serving(queue.app()) as queue_url:
        directory = EndpointDirectory(None, fallback={"gpu_worker": queue_url})
        response = await Router(app_dir, "api", directory).route({"function_name": "embed"})
        assert response is not None and response.success
        missing = await Router(app_dir, "api", EndpointDirectory(None)).route(
            {"function_name": "embed"}
        )
    assert missing is not None and missing.error_type is ErrorType.ROUTING
    assert "State Manager is not configured" in (missing.error or "")


def test_router_from_env() -> None:
    environ = {"FLASH_RESOURCE_NAME": "api", "RUNPOD_API_KEY": KEY, "FLASH_ENVIRONMENT_ID": "e"}
    routing = Router.from_env(Path("/nonexistent"), environ)
    assert routing is not None and routing.resource == "api" and routing.api_key == KEY
    assert routing.directory.config == StateManagerConfig("https://api.runpod.io/graphql", KEY, "e")
    assert Router.from_env(Path("/nonexistent"), {}) is None
    no_env = Router.from_env(Path("/nonexistent"), {"FLASH_RESOURCE_NAME": "api"})
    assert no_env is not None and no_env.directory.config is None


async def test_a_target_that_does_not_answer_in_time_is_a_timeout(app_dir: Path) -> None:
    release = asyncio.Event()
    hanging = FastAPI()

    @hanging.post("/runsync")
    async def runsync() -> dict[str, Any]:
        await release.wait()
        return {}

    async with serving(hanging) as url:
        directory = EndpointDirectory(None, fallback={"gpu_worker": url})
        routing = Router(app_dir, "api", directory, margin_s=0.0)
        try:
            response = await routing.route({"function_name": "embed", "limits": {"timeout_s": 0.2}})
        finally:
            release.set()
    assert response is not None and response.error_type is ErrorType.TIMEOUT
    assert (response.error or "").startswith(
        "timed out: resource 'gpu_worker' did not answer in time"
    )


async def test_state_manager_answers_read_as_runpod_flash_reads_them(app_dir: Path) -> None:
    manifest = manifest_for(app_dir) | {"resources_endpoints": {"gpu_worker": "http://q/"}}
    state = FakeStateManager(json.loads(json.dumps(manifest)))
    async with serving(state.app()) as state_url:
        config = StateManagerConfig(f"{state_url}/graphql", KEY, "env-1")
        assert await EndpointDirectory(config).url_of("gpu_worker") == "http://q"
        state.manifest = json.dumps(manifest)  # type: ignore[assignment]  # a JSON scalar as text
        assert await EndpointDirectory(config).url_of("gpu_worker") == "http://q"
        other = StateManagerConfig(f"{state_url}/graphql", KEY, "env-2")
        with pytest.raises(RoutingError, match="knows no active build of environment env-2"):
            await EndpointDirectory(other).url_of("gpu_worker")
    assert state.calls[0]["variables"] == {"flashEnvironmentId": "env-1"}
    assert state.calls[1]["variables"] == {"input": "build-1"}


async def test_an_endpoint_url_that_cannot_be_used_is_an_answer(app_dir: Path) -> None:
    for url in ("not a url", "ftp://127.0.0.1/x", "http://[::1"):
        directory = EndpointDirectory(None, fallback={"gpu_worker": url})
        response = await Router(app_dir, "api", directory).route({"function_name": "embed"})
        assert response is not None and response.error_type is ErrorType.ROUTING, url
        assert "\n" not in (response.error or ""), url
