import pytest
from pydantic import ValidationError

from sandvisor.protocol.models import ErrorType, FunctionRequest, FunctionResponse


def test_defaults_are_runpod_flash_defaults():
    request = FunctionRequest(function_name="f")
    assert request.args == [] and request.kwargs == {} and request.modules == {}
    assert request.execution_type == "function" and request.method_name == "__call__"
    assert request.create_new_instance is True and request.serialization_format == "cloudpickle"
    assert request.dependencies is None and request.limits is None


def test_unknown_request_fields_are_ignored():
    assert FunctionRequest(function_name="f", something_new=1).function_name == "f"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "function_name is required"),
        ({"execution_type": "class"}, "class_name is required"),
        ({"function_name": "f", "args": "x"}, "valid list"),
        ({"function_name": "f", "limits": {"timeout_s": -1}}, "greater than 0"),
        ({"function_name": "f", "limits": {"walltime": 1}}, "Extra inputs"),
    ],
)
def test_validation(fields, message):
    with pytest.raises(ValidationError, match=message):
        FunctionRequest(**fields)


def test_wire_form_leaves_unset_extras_out_and_keeps_success():
    wire = FunctionResponse(success=False, error="x", error_type=ErrorType.TIMEOUT).to_wire()
    assert wire == {"success": False, "error": "x", "error_type": "timeout"}
    shown = FunctionResponse(success=True, json_result=1, result_display="1")
    assert "result_display" not in shown.to_wire()
