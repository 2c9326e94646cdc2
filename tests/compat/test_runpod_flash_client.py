"""Wire compatibility, checked with runpod-flash's own client code (a test-only dependency).

Requests are built by runpod-flash itself (its FunctionRequest model, LiveServerlessStub's
prepare_request on real functions, its remote class wrapper) and run through Supervisor.run; our
responses go back through the JSON a RunPod job carries and are decoded by its handle_response.
"""

from __future__ import annotations

import json

import pytest
from runpod_flash.execute_class import create_remote_class
from runpod_flash.protos.remote_execution import FunctionRequest as FlashRequest
from runpod_flash.protos.remote_execution import FunctionResponse as FlashResponse
from runpod_flash.stubs.live_serverless import LiveServerlessStub

from sandvisor.protocol.models import FunctionRequest, FunctionResponse
from sandvisor.supervisor.core import Supervisor

pytestmark = pytest.mark.compat


def statistics(values, *, precision=2):
    import math  # runpod-flash ships only the function's source: imports go inside it

    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    print(f"n={len(values)}")
    return {"mean": round(mean, precision), "std": round(spread, precision)}


async def make_tuple(a, b):
    import asyncio

    await asyncio.sleep(0)
    return (a, b, {"nested": [a, b]})


def explode(reason):
    raise RuntimeError(f"exploded: {reason}")


class Accumulator:
    def __init__(self, start):
        self.total = start

    def add(self, *amounts):
        self.total += sum(amounts)
        return self.total


def over_the_wire(response: FunctionResponse) -> FlashResponse:
    """What a runpod-flash client rebuilds from a RunPod job's JSON output."""
    return FlashResponse(**json.loads(json.dumps(response.to_wire())))


@pytest.fixture
def stub() -> LiveServerlessStub:
    return LiveServerlessStub(server=None)


async def test_prepared_requests_of_real_functions_run_and_decode(supervisor: Supervisor, stub):
    request = await stub.prepare_request(
        statistics, None, None, True, [2, 4, 4, 4, 5, 5, 7, 9], precision=1
    )
    response = await supervisor.run(request.model_dump(exclude_none=True))
    assert stub.handle_response(over_the_wire(response)) == {"mean": 5.0, "std": 2.0}
    assert response.stdout == "n=8\n"


async def test_async_functions_and_python_objects(supervisor: Supervisor, stub):
    request = await stub.prepare_request(make_tuple, None, None, True, "x", b"y")
    response = await supervisor.run(request)  # the flash model itself is accepted too
    assert stub.handle_response(over_the_wire(response)) == ("x", b"y", {"nested": ["x", b"y"]})


async def test_a_failure_raises_in_the_client_with_our_reason(supervisor: Supervisor, stub):
    request = await stub.prepare_request(explode, None, None, True, "on purpose")
    response = await supervisor.run(request.model_dump(exclude_none=True))
    with pytest.raises(
        Exception, match="Remote execution failed: RuntimeError: exploded: on purpose"
    ):
        stub.handle_response(over_the_wire(response))


async def test_class_requests_built_by_the_remote_class_wrapper(supervisor: Supervisor, stub):
    wrapper = create_remote_class(Accumulator, None, None, None, True)(10)
    request = wrapper._build_class_request("add", (1, 2), {})
    response = await supervisor.run(request.model_dump(exclude_none=True))
    assert stub.handle_response(over_the_wire(response)) == 13


async def test_json_serialization_format(supervisor: Supervisor, stub):
    request = FlashRequest(
        function_name="double",
        function_code="def double(x):\n    return [x, x]\n",
        args=[{"k": 1}],
        serialization_format="json",
    )
    response = await supervisor.run(request.model_dump(exclude_none=True))
    assert stub.handle_response(over_the_wire(response)) == [{"k": 1}, {"k": 1}]


def test_our_models_have_every_field_of_theirs_with_the_same_defaults():
    for ours, theirs in ((FunctionRequest, FlashRequest), (FunctionResponse, FlashResponse)):
        for name, field in theirs.model_fields.items():
            assert name in ours.model_fields, f"{ours.__name__} lacks {name}"
            assert ours.model_fields[name].get_default(
                call_default_factory=True
            ) == field.get_default(call_default_factory=True), name
            assert ours.model_fields[name].is_required() == field.is_required(), name


def test_requests_they_accept_we_accept_and_the_reverse_for_rejections():
    cases = [
        {"function_name": "f"},
        {"execution_type": "class", "class_name": "C"},
        {"execution_type": "function"},
        {"execution_type": "class"},
        {"function_name": "f", "args": "nope"},
        {"function_name": "f", "create_new_instance": "maybe"},
    ]
    for case in cases:
        outcomes = []
        for model in (FlashRequest, FunctionRequest):
            try:
                model(**case)
                outcomes.append(True)
            except ValueError:
                outcomes.append(False)
        assert outcomes[0] == outcomes[1], case
