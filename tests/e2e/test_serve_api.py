"""``sandvisor serve --rp_serve_api``: runpod's local API server driving our handler over HTTP."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from runpod_flash.protos.remote_execution import FunctionRequest as FlashRequest
from runpod_flash.protos.remote_execution import FunctionResponse as FlashResponse
from runpod_flash.runtime.serialization import serialize_args
from tests.e2e.conftest import (
    ServeProcess,
    free_port,
    post_json,
    request_for,
    serve_env,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_api(tmp: Path, wheelhouse: Path | None = None, **extra: str) -> tuple[ServeProcess, str]:
    port = free_port()
    server = ServeProcess(
        ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        serve_env(tmp / "home", wheelhouse, **extra),
        tmp / "serve.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/docs"), 30, f"the API server on {url}")
    except AssertionError:
        server.stop()
        raise AssertionError(f"serve did not come up:\n{server.log()[-3000:]}") from None
    return server, url


def write_app(app: Path) -> Path:
    """A deployed Flash app: its module and the manifest `flash build` writes beside it."""
    (app / "workers").mkdir(parents=True)
    (app / "workers" / "__init__.py").write_text("")
    (app / "workers" / "text.py").write_text(
        "def count_words(text):\n    print('counting')\n    return len(text.split())\n"
    )
    function = {"name": "count_words", "module": "workers.text", "is_async": False}
    manifest = {
        "version": "1.0",
        "project_name": "demo",
        "resources": {"cpu_worker": {"module_path": "workers.text", "functions": [function]}},
        "function_registry": {"count_words": "cpu_worker"},
    }
    (app / "flash_manifest.json").write_text(json.dumps(manifest))
    return app


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("api")
    server, url = start_api(tmp, wheelhouse, SANDVISOR_APP_DIR=str(write_app(tmp / "app")))
    yield url
    left = server.stop()
    assert not left, f"processes left behind: {left}"


def test_runsync_with_a_runpod_flash_request(api: str) -> None:
    code = "def scale(values, factor):\n    print('scaling', len(values))\n    return [v * factor for v in values]\n"
    request = FlashRequest(
        function_name="scale", function_code=code, args=serialize_args(([1, 2, 3], 10))
    )
    answer = post_json(f"{api}/runsync", {"input": request.model_dump(exclude_none=True)})
    assert answer["status"] == "COMPLETED", answer
    response = FlashResponse(**answer["output"])
    assert response.success
    assert cloudpickle.loads(base64.b64decode(response.result)) == [10, 20, 30]
    assert "scaling 3" in response.stdout


def test_run_then_status(api: str) -> None:
    queued = post_json(
        f"{api}/run", {"input": request_for("def main(x):\n    return x + 1\n", args=[41])}
    )
    assert queued["status"] == "IN_PROGRESS"
    answer = post_json(f"{api}/status/{queued['id']}", {})
    assert answer["status"] == "COMPLETED", answer
    assert answer["output"]["json_result"] == 42


def test_job_that_installs_a_dependency(api: str) -> None:
    code = "def main():\n    import tinypkg\n    return tinypkg.__version__\n"
    answer = post_json(
        f"{api}/runsync", {"input": request_for(code, dependencies=["tinypkg==2.0"])}
    )
    assert answer["status"] == "COMPLETED", answer
    assert answer["output"]["json_result"] == "2.0"
    assert "tinypkg" in answer["output"]["stdout"]  # the install's log is in the job's output


def test_a_crash_then_a_normal_job(api: str) -> None:
    crash = "import os\ndef main():\n    print('about to crash', flush=True)\n    os.abort()\n"
    answer = post_json(f"{api}/runsync", {"input": request_for(crash)})
    assert answer["status"] == "FAILED"
    assert "SIGABRT" in answer["error"]
    answer = post_json(f"{api}/runsync", {"input": request_for("def main():\n    return 'fine'\n")})
    assert answer["status"] == "COMPLETED", answer
    assert answer["output"]["json_result"] == "fine"


def test_a_deployed_function_runs_from_the_app_directory(api: str) -> None:
    job = {
        "function_name": "count_words",
        "args": ["one two three"],
        "serialization_format": "json",
    }
    answer = post_json(f"{api}/runsync", {"input": job})
    assert answer["status"] == "COMPLETED", answer
    assert answer["output"]["json_result"] == 3
    assert answer["output"]["stdout"] == "counting\n"
    answer = post_json(f"{api}/runsync", {"input": job | {"function_name": "nope"}})
    assert answer["status"] == "FAILED"
    assert "'nope' is not a function of the deployed app" in answer["error"]


def test_an_invalid_request_fails_with_a_clear_error(api: str) -> None:
    answer = post_json(f"{api}/runsync", {"input": {"args": []}})
    assert answer["status"] == "FAILED"
    assert answer["error"].startswith("invalid request: ")


def test_stream_mode_sends_log_batches_then_the_response(tmp_path: Path) -> None:
    server, url = start_api(tmp_path, SANDVISOR_RUNPOD_STREAM="true")
    try:
        code = "import time\ndef main():\n    for i in range(3):\n        print('line', i, flush=True)\n        time.sleep(0.3)\n    return 'done'\n"
        queued = post_json(f"{url}/run", {"input": request_for(code)})
        answer = post_json(f"{url}/stream/{queued['id']}", {})
    finally:
        left = server.stop()
    assert not left, f"processes left behind: {left}"
    assert answer["status"] == "COMPLETED", answer
    chunks = [chunk["output"] for chunk in answer["stream"]]
    final = chunks[-1]
    assert final["success"] and final["json_result"] == "done"
    logged = "".join(r["text"] for chunk in chunks[:-1] for r in chunk["logs"])
    assert logged == "line 0\nline 1\nline 2\n"
    assert len(chunks) >= 3  # more than one batch: they went out while the job ran
