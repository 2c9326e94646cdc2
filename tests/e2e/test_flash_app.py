"""A deployed Flash app end to end: built by runpod-flash's own ``flash build`` (offline; an
artifact of the same layout made by the test where it cannot run), served by ``sandvisor serve``
as a queue worker (runpod's local API) and as a load-balanced worker (``--lb``), with the
environment ``flash preview`` gives its containers, and called with runpod-flash's client code.

    test ---- runsync(embed) ------------------------> serve --rp_serve_api   (gpu_worker)
    test ---- LoadBalancerSlsStub: POST /add --------> serve --lb             (api)
    test ---- /execute(embed) --> serve --lb (api) --/runsync--> the queue worker above
                                    ^ endpoints from a fake State Manager in the test
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from runpod_flash.protos.remote_execution import FunctionRequest as FlashRequest
from runpod_flash.protos.remote_execution import FunctionResponse as FlashResponse
from runpod_flash.runtime.serialization import serialize_args
from runpod_flash.stubs.live_serverless import LiveServerlessStub
from runpod_flash.stubs.load_balancer_sls import LoadBalancerSlsStub
from tests.e2e.conftest import (
    ServeProcess,
    free_port,
    one_shot,
    post_json,
    serve_env,
    wait_until,
)
from tests.flash_app import flash_environ
from tests.flash_app import make_artifact as make_test_artifact
from tests.servers import FakeStateManager, serving

pytestmark = pytest.mark.e2e

FLASH = str(Path(sys.executable).with_name("flash"))
DEAD_PROXY = "http://127.0.0.1:9"

GPU_WORKER = """\
from runpod_flash import LiveServerless, remote

gpu = LiveServerless(name="gpu_worker")


@remote(resource_config=gpu)
def embed(text):
    print(f"embedding {text!r}")
    return {"length": len(text), "upper": text.upper()}
"""

API = """\
from runpod_flash import LoadBalancerSlsResource, remote

api = LoadBalancerSlsResource(name="api", imageName="sandvisor:cpu")


@remote(resource_config=api, method="POST", path="/add")
def add(a, b):
    print(f"adding {a} and {b}")
    return a + b
"""


def flash_build(project: Path) -> Path | None:
    """``flash build`` of the two-resource project, with no route off this machine."""
    project.mkdir()
    (project / "gpu_worker.py").write_text(GPU_WORKER)
    (project / "api.py").write_text(API)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, NO_PROXY="127.0.0.1")
    done = subprocess.run(
        [FLASH, "build"], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    artifact = project / ".flash" / "artifact.tar.gz"
    return artifact if done.returncode == 0 and artifact.is_file() else None


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("flash")
    built = flash_build(tmp / "project")
    if built is not None:
        return built
    return make_test_artifact(tmp)  # same layout and manifest shape, made here


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def start(tmp: Path, args: list[str], ready: str, **environ: str) -> ServeProcess:
    server = ServeProcess(args, serve_env(tmp / "home", **environ), tmp / "serve.log")
    try:
        wait_until(lambda: _status(ready) == 200, 60, f"{ready} to answer 200")
    except AssertionError:
        server.stop()
        raise AssertionError(f"serve did not come up:\n{server.log()[-3000:]}") from None
    return server


@pytest.fixture(scope="module")
def queue_worker(
    tmp_path_factory: pytest.TempPathFactory, artifact: Path
) -> Iterator[tuple[str, ServeProcess]]:
    tmp = tmp_path_factory.mktemp("queue")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environ = flash_environ("gpu_worker", artifact, SANDVISOR_APP_DIR=str(tmp / "app"))
    args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    server = start(tmp, args, f"{url}/docs", **environ)
    yield url, server
    left = server.stop()
    assert not left, f"processes left behind: {left}"


def start_lb(tmp: Path, artifact: Path, **extra: str) -> tuple[str, ServeProcess]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environ = flash_environ("api", artifact, SANDVISOR_APP_DIR=str(tmp / "app"), **extra)
    server = start(
        tmp, ["--lb", "--host", "127.0.0.1", "--port", str(port)], f"{url}/ping", **environ
    )
    return url, server


@pytest.fixture(scope="module")
def lb_worker(
    tmp_path_factory: pytest.TempPathFactory, artifact: Path
) -> Iterator[tuple[str, ServeProcess]]:
    url, server = start_lb(tmp_path_factory.mktemp("lb"), artifact)
    yield url, server
    left = server.stop()
    assert not left, f"processes left behind: {left}"


def add(a, b):
    """The client's side of the deployed route, as runpod-flash's @remote marks it."""


add.__remote_config__ = {"method": "POST", "path": "/add"}  # type: ignore[attr-defined]


def shout(text):
    return text.upper() + "!"


def test_the_queue_function_answers_runpod_flash(queue_worker: tuple[str, ServeProcess]) -> None:
    url, server = queue_worker
    request = FlashRequest(function_name="embed", args=serialize_args(("hello",)))
    job = post_json(f"{url}/runsync", {"input": request.model_dump(exclude_none=True)})
    response = FlashResponse(**job["output"])
    assert LiveServerlessStub(server=None).handle_response(response) == {
        "length": 5,
        "upper": "HELLO",
    }
    assert "embedding 'hello'" in (response.stdout or "")
    assert "unpacked" in server.log()


async def test_the_lb_route_and_execute_answer_runpod_flash(
    lb_worker: tuple[str, ServeProcess],
) -> None:
    url, _ = lb_worker
    stub = LoadBalancerSlsStub(SimpleNamespace(name="api", endpoint_url=url), timeout=60)
    assert await stub(add, None, None, True, 2, 3) == 5  # the manifest's route
    assert await stub(shout, None, None, True, "hi") == "HI!"  # /execute, code in the request
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        deployed = await client.post(
            "/execute",
            json={"function_name": "add", "args": [4, 5], "serialization_format": "json"},
        )
    assert deployed.json()["json_result"] == 9


async def test_a_function_of_another_resource_is_forwarded(
    tmp_path: Path, artifact: Path, queue_worker: tuple[str, ServeProcess]
) -> None:
    queue_url, _ = queue_worker
    app = tmp_path / "manifest-app"
    app.mkdir()
    subprocess.run(["tar", "xzf", str(artifact), "-C", str(app)], check=True)
    manifest: dict[str, Any] = json.loads((app / "flash_manifest.json").read_text())
    state = FakeStateManager(manifest | {"resources_endpoints": {"gpu_worker": queue_url}})
    async with serving(state.app()) as state_url:
        url, server = start_lb(
            tmp_path,
            artifact,
            RUNPOD_API_KEY="test-key",
            FLASH_ENVIRONMENT_ID="env-1",
            RUNPOD_API_BASE_URL=state_url,
        )
        try:
            request = FlashRequest(function_name="embed", args=serialize_args(("abc",)))
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                body = (
                    await client.post("/execute", json=request.model_dump(exclude_none=True))
                ).json()
        finally:
            left = server.stop()
    assert not left, f"processes left behind: {left}"
    assert LiveServerlessStub(server=None).handle_response(FlashResponse(**body)) == {
        "length": 3,
        "upper": "ABC",
    }
    assert state.authorizations and set(state.authorizations) == {"Bearer test-key"}
    assert "forwarding 'embed' to resource gpu_worker" in server.log()


def test_a_truncated_artifact_is_an_answer_not_a_crash(tmp_path: Path, artifact: Path) -> None:
    data = artifact.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    url, server = start_lb(tmp_path, truncated)
    try:
        for _ in range(2):
            answer = post_json(f"{url}/execute", {"function_name": "add"})
            assert answer["success"] is False and answer["error_type"] == "deployment"
            assert answer["error"].startswith("deployed app unavailable: cannot unpack")
        assert _status(f"{url}/ping") == 200 and server.process.poll() is None
        assert "error: the deployed app cannot be served" in server.log()
    finally:
        left = server.stop()
    assert not left, f"processes left behind: {left}"


def test_a_queue_worker_with_a_hostile_artifact_answers_its_job(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        link = tarfile.TarInfo("./etc")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    environ = flash_environ("gpu_worker", hostile, SANDVISOR_APP_DIR=str(tmp_path / "app"))
    done = one_shot(tmp_path, {"input": {"function_name": "embed"}}, **environ)
    assert done.returncode == 1  # the job failed; the worker itself did not crash
    assert "error: the deployed app cannot be served" in done.stderr
    assert "deployed app unavailable: cannot unpack the build artifact" in done.stdout
    assert "unsafe member './etc': a link to an absolute path" in done.stdout
    assert not (tmp_path / "app").exists()
