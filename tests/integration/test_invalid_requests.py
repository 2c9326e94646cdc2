"""Every invalid request, wherever it is found, answers alike.

Found by the supervisor (parsing, limits, job id, dependencies) or by the child (the code, the
``modules`` keys, the arguments): ``success`` false, ``error_type`` invalid_request, an error
whose first line starts "invalid request: ", no exit code or signal (no process ended for it),
and for class requests no instance: none is answered, none is left live.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from tests.helpers import class_request, function_request

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor

CODE = "def main(*args):\n    return 1\n"
CLASS = "class Greeter:\n    def __init__(self, *args):\n        pass\n    def hello(self):\n        return 1\n"
UNPICKLABLE = base64.b64encode(b"not a pickle").decode()

ROWS: list[tuple[str, Any]] = [
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
