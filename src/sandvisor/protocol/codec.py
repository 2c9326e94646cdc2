"""Arguments and results on the wire: base64 cloudpickle (runpod-flash's default) or plain JSON.

Decoding arguments unpickles user data, so it happens only in the child; the supervisor only
checks that args are well-formed strings. Encoding a result happens in the child too.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import cloudpickle

from sandvisor.protocol.text import exception_line

CLOUDPICKLE = "cloudpickle"
JSON = "json"
FORMATS = (CLOUDPICKLE, JSON)


class CodecError(ValueError):
    """An argument or result cannot be encoded or decoded; the message names which one."""


def encode_value(value: Any) -> str:
    return base64.b64encode(cloudpickle.dumps(value)).decode("ascii")


def decode_value(data: Any, where: str) -> Any:
    if not isinstance(data, str):
        raise CodecError(
            f"{where}: expected a base64 cloudpickle string, got {type(data).__name__}"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodecError(f"{where}: invalid base64 ({exc})") from exc
    try:
        return cloudpickle.loads(raw)
    except SystemExit:
        raise
    except BaseException as exc:  # the value's own hooks (__setstate__, ...) raised: any class
        raise CodecError(f"{where}: cannot unpickle ({exception_line(exc)})") from exc


def decode_arguments(
    args: list[Any], kwargs: dict[str, Any], fmt: str, what: str = "args"
) -> tuple[list[Any], dict[str, Any]]:
    """Turn wire args/kwargs into Python values. ``what`` names them in errors."""
    if fmt == JSON:
        return list(args), dict(kwargs)
    if fmt != CLOUDPICKLE:
        raise CodecError(f"unknown serialization_format {fmt!r}; expected one of {FORMATS}")
    kw_what = "kwargs" if what == "args" else f"{what.removesuffix('args')}kwargs"
    return (
        [decode_value(value, f"{what}[{i}]") for i, value in enumerate(args)],
        {key: decode_value(value, f"{kw_what}[{key!r}]") for key, value in kwargs.items()},
    )


def encode_result(value: Any, fmt: str) -> dict[str, Any]:
    """The response fields that carry ``value``: ``result`` or ``json_result``.

    Encoding runs the value's own hooks (``__reduce__``, ``__getstate__``, ``__str__`` of what
    they raise): whatever they raise, a ``KeyboardInterrupt`` or a ``RecursionError`` of a deep
    structure included, becomes a :class:`CodecError` that says so in one line (see
    :func:`unserializable`). Only ``SystemExit`` passes: that is the job asking to exit.

    JSON is strict JSON, what RunPod's job API and every client can read: NaN and the
    infinities are refused (pydantic would write them as null, a wrong answer that looks right;
    Python's json would write ``NaN``, which is not JSON). ``json_result`` is the value as JSON
    carries it (object keys as strings, tuples as lists), so ``Supervisor.run`` answers what the
    wire does.
    """
    try:
        if fmt == JSON:
            return {"json_result": json.loads(json.dumps(value, allow_nan=False))}
        return {"result": encode_value(value)}
    except SystemExit:
        raise
    except ValueError as exc:
        if fmt == JSON and "Out of range float" in str(exc):
            raise CodecError(
                "result is not JSON-serializable (it holds NaN or an infinity, which JSON"
                " cannot carry); return None or a string for them, or use"
                " serialization_format='cloudpickle'"
            ) from exc
        raise CodecError(unserializable(value, exc, fmt)) from exc
    except BaseException as exc:  # a user hook's failure is the result's, never the runtime's
        raise CodecError(unserializable(value, exc, fmt)) from exc


def unserializable(value: Any, exc: BaseException, fmt: str) -> str:
    """One line: ``result of type X cannot be serialized: Type: message`` (and, for JSON, how
    to send Python objects instead)."""
    line = f"result of type {type(value).__qualname__} cannot be serialized: {exception_line(exc)}"
    if fmt == JSON:
        line += "; use serialization_format='cloudpickle' for Python objects"
    return line
