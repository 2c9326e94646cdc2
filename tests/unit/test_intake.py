"""The request intake: one-line errors for text Python's json cannot read and for values the
child's frame cannot carry; good requests pass unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from sandvisor.protocol.codec import CodecError, encode_result
from sandvisor.protocol.models import FunctionRequest
from sandvisor.supervisor.errors import InvalidRequest
from sandvisor.supervisor.intake import (
    MAX_NESTING,
    NotJson,
    TooLarge,
    job_input,
    parse_json,
    parse_request,
)


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{bad", "Expecting property name"),
        (b'{"a": "\xff"}', "codec can't decode"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
        (b"[1" + b"0" * 5000 + b"]", "Exceeds the limit (4300 digits)"),
    ],
)
def test_text_json_cannot_read_is_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(NotJson) as caught:
        parse_json(data, "req.json")
    assert caught.value.summary.startswith("req.json is not JSON (")
    assert reason in caught.value.summary and "\n" not in str(caught.value)


def test_a_body_over_the_limit_is_refused_by_its_size() -> None:
    with pytest.raises(TooLarge, match="the body is 11 bytes, over the limit of 10 bytes"):
        parse_json(b'"123456789"', max_bytes=10)
    assert parse_json(b'"12345678"', max_bytes=10) == "12345678"


def test_a_job_input_must_be_an_object() -> None:
    assert job_input({"input": {"a": 1}}) == {"a": 1}
    assert job_input({"function_name": "f"}) == {"function_name": "f"}
    for value, name in ((None, "null"), ([1], "array"), ("x", "string")):
        with pytest.raises(InvalidRequest, match=f"^input: expected a JSON object, got {name}$"):
            job_input({"input": value})


GOOD: dict[str, Any] = {"function_name": "f", "serialization_format": "json"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"args": ["a\ud800"]},
            "args[0]: the string has a lone surrogate ('\\ud800' at position 1)",
        ),
        ({"kwargs": {"k": {"\udc80": 1}}}, "kwargs['k'] key '\\udc80': the string has a lone"),
        ({"function_code": "x = '\ud800'"}, "function_code: the string has a lone surrogate"),
        ({"args": [2**64]}, "args[0]: an integer of 65 bits does not fit in 64"),
        ({"args": [deep(MAX_NESTING + 1)]}, "args[0][0][0][0][...]: nested deeper than 256 levels"),
        ({"args": [{1, 2}]}, "args[0]: a set is not a JSON value"),
        ({"args": [{(1, 2): 3}]}, "args[0]: a tuple key is not a JSON value"),
        ({"execution_type": "lambda"}, "execution_type: Input should be 'function' or 'class'"),
        ({"serialization_format": "yaml"}, "serialization_format: Input should be 'cloudpickle'"),
        ({"instance_id": "../x"}, "instance_id: '../x' (4 characters) is not 1-128 letters"),
        ({"instance_id": ""}, "instance_id: '' (0 characters) is not 1-128 letters"),
        ({"limits": {"timeout_s": float("nan")}}, "limits.timeout_s: Input should be a finite"),
    ],
)
def test_a_value_the_child_cannot_carry_is_named_by_its_path(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(GOOD | fields)
    assert caught.value.summary.startswith(message), caught.value.summary


def test_good_values_pass_and_a_model_is_checked_too() -> None:
    fields = {
        "args": [2**64 - 1, -(2**63), float("nan"), (1, "é"), deep(MAX_NESTING)],
        "kwargs": {"k": {1: None, "é": [True]}},
        "instance_id": "_Model_0123abcd",
    }
    assert parse_request(GOOD | fields).args[0] == 2**64 - 1
    with pytest.raises(InvalidRequest, match="lone surrogate"):
        parse_request(FunctionRequest.model_validate(GOOD | {"args": ["\ud800"]}))


def test_a_json_result_is_strict_json() -> None:
    assert encode_result({"a": [1.5]}, "json") == {"json_result": {"a": [1.5]}}
    for value in (float("nan"), [float("inf")], {"x": -float("inf")}):
        with pytest.raises(CodecError, match="holds NaN or an infinity"):
            encode_result(value, "json")
    assert "result" in encode_result(float("nan"), "cloudpickle")


def test_a_json_result_is_what_the_wire_carries() -> None:
    fields = encode_result({1: (2, 3), None: "x"}, "json")
    assert fields == {"json_result": {"1": [2, 3], "null": "x"}}
