import base64

import cloudpickle
import pytest

from sandvisor.protocol.codec import (
    CodecError,
    decode_arguments,
    decode_value,
    encode_result,
    encode_value,
)


def test_cloudpickle_values_round_trip_including_lambdas():
    square = decode_value(encode_value(lambda x: x * x), "args[0]")
    assert square(7) == 49


def test_arguments_decode_by_format():
    args, kwargs = decode_arguments([encode_value(1)], {"b": encode_value([2])}, "cloudpickle")
    assert (args, kwargs) == ([1], {"b": [2]})
    assert decode_arguments([1, "x"], {"k": None}, "json") == ([1, "x"], {"k": None})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!not base64!!", r"args\[0\]: invalid base64"),
        (base64.b64encode(b"not a pickle").decode(), r"args\[0\]: cannot unpickle"),
        (12, r"args\[0\]: expected a base64 cloudpickle string, got int"),
    ],
)
def test_bad_arguments_name_which_one_and_why(value, message):
    with pytest.raises(CodecError, match=message):
        decode_arguments([value], {}, "cloudpickle")


def test_bad_kwargs_and_constructor_args_are_named_too():
    with pytest.raises(CodecError, match=r"kwargs\['x'\]"):
        decode_arguments([], {"x": "%%%"}, "cloudpickle")
    with pytest.raises(CodecError, match=r"constructor_kwargs\['x'\]"):
        decode_arguments([], {"x": "%%%"}, "cloudpickle", "constructor_args")


def test_unknown_format_is_refused():
    with pytest.raises(CodecError, match="unknown serialization_format 'yaml'"):
        decode_arguments([], {}, "yaml")


def test_results_encode_to_the_field_of_their_format():
    assert encode_result({"a": 1}, "json") == {"json_result": {"a": 1}}
    encoded = encode_result({1, 2}, "cloudpickle")["result"]
    assert cloudpickle.loads(base64.b64decode(encoded)) == {1, 2}
    with pytest.raises(CodecError, match="result of type set cannot be serialized: TypeError"):
        encode_result({1, 2}, "json")
