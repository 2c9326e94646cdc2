"""Every invalid request, wherever it is found and wherever it comes in, answers alike.

Found by the supervisor (parsing, limits, job id, dependencies) or by the child (the code, the
``modules`` keys, the arguments): ``success`` false, ``error_type`` invalid_request, an error
whose first line starts "invalid request: ", no exit code or signal (no process ended for it),
and for class requests no instance: none is answered, none is left live.

The rows of the intake family (``supervisor/intake.py``) go through every entry point that can
receive them: ``Supervisor.run``, the queue handler, the HTTP worker's ``/execute`` (a real
uvicorn on 127.0.0.1, a real HTTP client) and ``sandvisor run``; bodies Python's json cannot
read go through ``/execute``, ``sandvisor run`` and ``sandvisor serve --test_input``. After
each bad one, the same worker answers a good one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.helpers import class_request, function_request, make_settings
from tests.integration.test_cli import run_cli
from tests.servers import serving

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.intake import MAX_NESTING
from sandvisor.worker import handler as queue_handler
from sandvisor.worker import host as hosting
from sandvisor.worker.lb import create_app

CODE = "def main(*args):\n    return 1\n"
CLASS = "class Greeter:\n    def __init__(self, *args):\n        pass\n    def hello(self):\n        return 1\n"
UNPICKLABLE = base64.b64encode(b"not a pickle").decode()
GOOD = function_request("def main(x):\n    return x + 1\n", args=[1])


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


#: Request input that is not handled as bad input unless checked (findings F3, F8, F9, F22):
#: each runs through every entry point.
FAMILY: list[tuple[str, Any]] = [
    ("request_null", None),
    ("lone_surrogate_in_args", function_request(CODE, args=["a\ud800"])),
    ("lone_surrogate_in_a_kwargs_key", function_request(CODE, kwargs={"\ud800": 1})),
    ("lone_surrogate_in_code", function_request('def main():\n    return "\ud800"\n')),
    ("lone_surrogate_in_modules", function_request(CODE, modules={"m.py": "x = '\udfff'"})),
    ("lone_surrogate_in_a_dependency", function_request(CODE, dependencies=["\ud800"])),
    ("integer_over_64_bits", function_request(CODE, args=[2**64])),
    ("nested_too_deep", function_request(CODE, args=[nested(MAX_NESTING + 1)])),
    ("execution_type_unknown", function_request(CODE, execution_type="lambda")),
    ("serialization_format_unknown", function_request(CODE, serialization_format="yaml")),
    ("limits_nan", function_request(CODE, limits={"timeout_s": float("nan")})),
    ("instance_id_path", class_request("Greeter", CLASS, "hello", instance_id="../../etc/x")),
    ("instance_id_long", class_request("Greeter", CLASS, "hello", instance_id="x" * 5000)),
    ("instance_id_nul", class_request("Greeter", CLASS, "hello", instance_id="x\x00y")),
    ("instance_id_empty", class_request("Greeter", CLASS, "hello", instance_id="")),
]

ROWS: list[tuple[str, Any]] = [
    *FAMILY,
    ("not_an_object", ["a", "list"]),
    ("args_not_a_list", function_request(CODE, args="x")),
    ("no_function_name", {"function_code": CODE}),
    ("no_class_name", {"execution_type": "class", "class_code": CLASS}),
    ("limits_over_the_ceiling", function_request(CODE, limits={"timeout_s": 10**9})),
    ("limits_unknown_field", function_request(CODE, limits={"no_such_limit": 1})),
    ("dependency_not_a_spec", function_request(CODE, dependencies=["not a spec !!"])),
    ("system_dependency_not_a_name", function_request(CODE, system_dependencies=["BAD NAME;"])),
    ("modules_parent_dir", function_request(CODE, modules={"..": "x = 1"})),
    ("modules_escapes", function_request(CODE, modules={"../x.py": "x = 1"})),
    ("modules_absolute", function_request(CODE, modules={"/tmp/x.py": "x = 1"})),
    ("modules_dot_part", function_request(CODE, modules={"./x.py": "x = 1"})),
    ("modules_empty_part", function_request(CODE, modules={"a//x.py": "x = 1"})),
    ("modules_empty_key", function_request(CODE, modules={"": "x = 1"})),
    ("modules_backslash", function_request(CODE, modules={"a\\x.py": "x = 1"})),
    ("modules_not_python", function_request(CODE, modules={"x.txt": "x = 1"})),
    ("syntax_error", function_request("def main(:\n")),
    ("missing_function", function_request(CODE, name="nowhere")),
    (
        "args_not_base64",
        {"function_name": "main", "function_code": CODE, "args": ["!!not base64!!"]},
    ),
    (
        "args_not_a_pickle",
        {"function_name": "main", "function_code": CODE, "args": [UNPICKLABLE]},
    ),
    ("missing_class", class_request("Nobody", CLASS, "hello")),
    ("missing_method", class_request("Greeter", CLASS, "nowhere")),
    ("class_modules_escape", class_request("Greeter", CLASS, "hello", modules={"../x.py": ""})),
    (
        "constructor_args_not_base64",
        {
            "execution_type": "class",
            "class_name": "Greeter",
            "class_code": CLASS,
            "method_name": "hello",
            "constructor_args": ["!!not base64!!"],
        },
    ),
    (
        "method_args_not_base64",
        {
            "execution_type": "class",
            "class_name": "Greeter",
            "class_code": CLASS,
            "method_name": "hello",
            "args": ["!!not base64!!"],
        },
    ),
]


def assert_invalid(response: FunctionResponse) -> None:
    assert not response.success
    assert response.error_type is ErrorType.INVALID_REQUEST, response.error
    assert (response.error or "").startswith("invalid request: "), response.error
    assert "invalid request: invalid request" not in (response.error or "")
    assert (response.exit_code, response.signal) == (None, None)
    assert response.instance_id is None and response.instance_info is None


@pytest.mark.parametrize("request_", [pytest.param(row[1], id=row[0]) for row in ROWS])
async def test_every_invalid_request_answers_alike(supervisor: Supervisor, request_: Any) -> None:
    assert_invalid(await supervisor.run(request_))
    assert supervisor.instances is not None and supervisor.instances.live == {}


@pytest.mark.parametrize(
    "job_id", ["../escape", "a/b", ".hidden", "-flag", "x" * 129, "sp ace", "nul\x00"]
)
async def test_a_job_id_that_cannot_name_its_resources_is_refused(
    supervisor: Supervisor, job_id: str
) -> None:
    response = await supervisor.run(function_request(CODE), job_id=job_id)
    assert_invalid(response)
    assert "job id" in (response.error or "")


def test_a_limit_over_its_ceiling_is_said_in_whole_numbers(settings: Any) -> None:
    from sandvisor.supervisor.errors import LimitsError
    from sandvisor.supervisor.intake import parse_request
    from sandvisor.supervisor.limits import Limits

    request = parse_request(function_request(CODE, limits={"max_output_bytes": 10**30}))
    with pytest.raises(LimitsError) as caught:
        Limits.resolve(settings, request.limits, gpus_available=0)
    assert f"10{'0' * 29} is over the ceiling of {settings.max_output_bytes} " in str(caught.value)


# -- every entry point ------------------------------------------------------------------------

#: Bodies Python's json cannot read, or requests in a RunPod job that is not one (F16, F19).
BODIES: list[tuple[str, bytes]] = [
    ("not_json", b"{bad"),
    ("not_utf8", b"\xff\xfe"),
    ("nested_deeper_than_python_reads", b"[" * 5000 + b"]" * 5000),
    (
        "integer_of_5000_digits",
        json.dumps(function_request(CODE)).encode()[:-1] + b', "args": [1' + b"0" * 5000 + b"]}",
    ),
    ("input_null", b'{"input": null}'),
    ("input_a_list", b'{"input": [1]}'),
]
UNREADABLE = {"not_json", "not_utf8", "nested_deeper_than_python_reads", "integer_of_5000_digits"}


def family_ids() -> list[Any]:
    return [pytest.param(row[1], id=row[0]) for row in FAMILY]


def one_line(error: str | None) -> str:
    first, _, _ = (error or "").partition("\n")
    return first


@pytest.fixture
async def lb(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """``/execute`` of a plain HTTP worker (no deployed app) whose body limit is 64 KiB."""
    app = create_app(make_settings(tmp_path / "home", max_request_bytes=64 * 1024), {}, 2)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


async def test_the_queue_handler_answers_each_alike_then_a_good_one(
    host: hosting.SupervisorHost,
) -> None:
    for name, request in FAMILY:
        output = await queue_handler.handler({"id": f"bad-{len(name)}", "input": request})
        assert_invalid(FunctionResponse.model_validate(output)), name
        good = await queue_handler.handler({"id": "good", "input": GOOD})
        assert good["json_result"] == 2, (name, good)


async def test_execute_answers_each_alike_then_a_good_one(lb: httpx.AsyncClient) -> None:
    for name, request in FAMILY:
        for body in (request, {"input": request}) if request is not None else (None,):
            answer = await lb.post("/execute", content=json.dumps(body).encode())
            assert answer.status_code == 200, (name, answer.text)
            assert_invalid(FunctionResponse.model_validate(answer.json()))
        good = await lb.post("/execute", json=GOOD)
        assert good.json()["json_result"] == 2, (name, good.text)


@pytest.mark.parametrize(("name", "body"), [pytest.param(*row, id=row[0]) for row in BODIES])
async def test_execute_answers_a_body_it_cannot_read_with_400(
    lb: httpx.AsyncClient, name: str, body: bytes
) -> None:
    answer = await lb.post("/execute", content=body)
    assert answer.status_code == (400 if name in UNREADABLE else 200), answer.text
    response = FunctionResponse.model_validate(answer.json())
    assert_invalid(response)
    assert "\n" not in (response.error or ""), response.error
    assert (await lb.post("/execute", json=GOOD)).json()["json_result"] == 2


async def test_execute_refuses_a_body_over_the_limit_with_413_before_holding_it(
    lb: httpx.AsyncClient,
) -> None:
    big = json.dumps(function_request(CODE, args=["x" * 100_000])).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the streamed size counts
        for start in range(0, len(big), 16 * 1024):
            yield big[start : start + 16 * 1024]

    for content in (big, chunks()):
        answer = await lb.post("/execute", content=content)
        assert answer.status_code == 413, answer.text
        response = FunctionResponse.model_validate(answer.json())
        assert_invalid(response)
        assert "over the limit of 65536 bytes (SANDVISOR_MAX_REQUEST_BYTES)" in one_line(
            response.error
        )
        assert (await lb.post("/execute", json=GOOD)).json()["json_result"] == 2


@pytest.mark.timeout(600)
def test_sandvisor_run_answers_each_alike(tmp_path: Path) -> None:
    """A request that is JSON, and an object, fails as a job (rc 1, the FunctionResponse); one
    that is not an object is unreadable input (rc 2: the test of bodies below)."""
    for name, request in FAMILY:
        if not isinstance(request, dict):
            continue
        done = run_cli("run", "-", "--json", stdin=json.dumps(request), home=tmp_path)
        assert done.returncode == 1, (name, done.stderr)
        assert_invalid(FunctionResponse.model_validate(json.loads(done.stdout)))
        assert "Traceback" not in done.stderr, (name, done.stderr)


@pytest.mark.parametrize("body", [pytest.param(row[1], id=row[0]) for row in BODIES])
def test_sandvisor_run_refuses_a_file_it_cannot_read_in_one_line(
    tmp_path: Path, body: bytes
) -> None:
    path = tmp_path / "request.json"
    path.write_bytes(body)
    done = run_cli("run", str(path), home=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("sandvisor run: ") and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(
    "body",
    [pytest.param(row[1], id=row[0]) for row in BODIES if row[0] in UNREADABLE - {"not_utf8"}],
)
def test_serve_refuses_a_test_input_it_cannot_read_in_one_line(tmp_path: Path, body: bytes) -> None:
    done = run_cli("serve", "--test_input", body.decode(), home=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("sandvisor serve: --test_input is not JSON ("), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
