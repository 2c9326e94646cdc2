"""Request intake: the one place a request from outside is read and checked.

Every entry point (the queue handler, the HTTP worker, ``sandvisor run``, ``Supervisor.run``)
goes through these, so the same bad input gets the same one-line ``invalid_request`` answer
everywhere, before anything of it reaches a child:

    parse_json(data, source, max_bytes)  bytes or text -> a JSON value; :class:`NotJson` (one
                                         line) for anything Python's json refuses (bad syntax,
                                         not UTF-8, nested too deep, an integer too long)
    job_input(document)                  a RunPod job ``{"input": {...}}`` -> its input; a bare
                                         request as it is
    parse_request(value)                 a dict or a model -> a checked ``FunctionRequest``

``parse_request`` checks what pydantic's model does not: every value the child is sent must
travel as msgpack and mean what JSON means (text without lone surrogates, integers of 64 bits,
scalar keys, bounded nesting, JSON types only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sandvisor.protocol.models import FunctionRequest
from sandvisor.supervisor.errors import InvalidRequest

#: How deep a value in a request may nest (lists and objects); the child's frame reader
#: (msgpack) and Python's json refuse values a few times deeper.
MAX_NESTING = 256
#: The integers msgpack carries: signed and unsigned 64 bits.
INT_RANGE = (-(2**63), 2**64 - 1)
#: Object keys a request may have besides strings (a Python caller's; JSON's are strings).
_SCALARS = (str, int, float, type(None))
#: Fields whose values are walked by :func:`check_values` (``limits`` is a typed model).
_WALKED = tuple(name for name in FunctionRequest.model_fields if name != "limits")


class NotJson(InvalidRequest):
    """The text is not a JSON value Python can read; the summary says why, in one line."""


class TooLarge(InvalidRequest):
    """A request body over the configured size limit."""


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type (object, array, string, number, boolean, null), else
    its Python type's name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def too_large(size: int, max_bytes: int, what: str = "the request") -> TooLarge:
    """The error of a request of ``size`` bytes over ``max_bytes`` (SANDVISOR_MAX_REQUEST_BYTES)."""
    return TooLarge(
        f"{what} is {size} bytes, over the limit of {max_bytes} bytes (SANDVISOR_MAX_REQUEST_BYTES)"
    )


def parse_json(data: bytes | str, source: str = "the body", max_bytes: int | None = None) -> Any:
    """The JSON value in ``data`` (UTF-8 bytes or text), as Python's ``json.loads`` reads it.

    Raises :class:`TooLarge` when ``data`` has more than ``max_bytes`` bytes (None: no limit),
    :class:`NotJson` when it is not UTF-8, not JSON, nested deeper than Python's recursion
    allows, or holds an integer longer than Python converts (4300 digits): the summary is one
    line, "``source`` is not JSON (reason)". Nothing else escapes.
    """
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if max_bytes is not None and size > max_bytes:
        raise too_large(size, max_bytes, source)
    try:
        return json.loads(data)
    except RecursionError:
        reason = "nested too deep for Python's json"
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and the int-digits limit
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise NotJson(f"{source} is not JSON ({reason})")


def job_input(document: Any) -> Any:
    """The request in ``document``: a RunPod job's ``input`` (``{"input": {...}}``, the form of
    worker-flash's test JSON), else ``document`` itself (a bare request).

    Raises :class:`InvalidRequest` for a job whose ``input`` is not an object (a request has
    no ``input`` field, so an object with one is always a job).
    """
    if isinstance(document, Mapping) and "input" in document:
        value = document["input"]
        if not isinstance(value, Mapping):
            raise InvalidRequest(f"input: expected a JSON object, got {json_type(value)}")
        return value
    return document


def parse_request(request: FunctionRequest | Mapping[str, Any] | Any) -> FunctionRequest:
    """A checked :class:`FunctionRequest` from a model (ours, or runpod-flash's own: anything
    with ``model_dump``) or a mapping.

    Raises :class:`InvalidRequest` naming the first thing wrong, in one line: not an object,
    a field pydantic refuses (:func:`describe_validation_error`), or a value that cannot travel
    to the child (:func:`check_values`).
    """
    if not isinstance(request, FunctionRequest):
        if hasattr(request, "model_dump"):  # e.g. runpod-flash's own FunctionRequest
            request = request.model_dump(exclude_none=True)
        if not isinstance(request, Mapping):
            raise InvalidRequest(f"expected a JSON object, got {json_type(request)}")
        try:
            request = FunctionRequest.model_validate(dict(request))
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc), str(exc)) from None
    check_values(request)
    return request


def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's first error as one line: ``where: what`` (and how many more there are)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{message}{more}"


def check_values(request: FunctionRequest) -> None:
    """Refuse a value of ``request`` that the child's frame cannot carry as JSON means it.

    Walks every field but ``limits``; raises :class:`InvalidRequest` naming the first bad value
    by its path (``args[0]``, ``kwargs['k']``): a string with a lone surrogate, an integer
    outside 64 bits, an object key that is not a scalar, nesting deeper than
    :data:`MAX_NESTING`, or a value of no JSON type (tuples pass as arrays). Floats all pass,
    NaN and the infinities too: Python's json reads them, and so does the job.
    """
    for name in _WALKED:
        _check(getattr(request, name), name, -1)  # a field's own list or object is no level


def _check(value: Any, where: str, depth: int) -> None:
    if value is None or isinstance(value, (bool, float)):
        return
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise InvalidRequest(
                f"{where}: an integer of {value.bit_length()} bits does not fit in 64; send it"
                " as a string, or with serialization_format 'cloudpickle'"
            )
    elif isinstance(value, (list, tuple, dict)):
        if depth >= MAX_NESTING:
            raise InvalidRequest(f"{where}: nested deeper than {MAX_NESTING} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, _SCALARS):
                    raise InvalidRequest(f"{where}: a {type(key).__name__} key is not a JSON value")
                _check(key, f"{where} key {_shown(key)}", depth + 1)
                _check(item, _inner(where, _shown(key), depth), depth + 1)
        else:
            for index, item in enumerate(value):
                _check(item, _inner(where, str(index), depth), depth + 1)
    else:
        raise InvalidRequest(
            f"{where}: a {type(value).__name__} is not a JSON value; send it with"
            " serialization_format 'cloudpickle'"
        )


def _shown(key: Any) -> str:
    """A key as an error shows it: its repr, at most 40 characters."""
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _inner(where: str, part: str, depth: int) -> str:
    """The path of an item: ``where[part]``, and past the fourth level ``where[...]`` once."""
    if depth < 3:
        return f"{where}[{part}]"
    return where if where.endswith("[...]") else f"{where}[...]"


def _check_text(text: str, where: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise InvalidRequest(
            f"{where}: the string has a lone surrogate ({bad!r} at position {exc.start}),"
            " which is not text and cannot be sent"
        ) from None
