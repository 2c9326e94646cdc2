"""The frames a job child sends, checked before the supervisor takes anything from them.

The child runs the job's code, and the job can write to its protocol descriptor: every frame is
the job's word, not sandvisor's. So each field the supervisor uses is checked for its type, its
allowed values and its size, and a frame that fails is the job's own error (one line, error type
``user_exception``), never an internal error of the supervisor, nor an answer that breaks the
response's rules (``success`` beside an ``error_type``, an ``exit_code`` beside a result).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sandvisor.protocol.messages import CHANNEL_FD
from sandvisor.protocol.models import ErrorType

#: The error types a child may report itself (``sandbox_child``'s ``JobFailure`` kinds); any
#: other kind it names (a limit, a timeout: the supervisor's to say) is a ``user_exception``.
CHILD_ERROR_KINDS = frozenset(
    {
        ErrorType.USER_EXCEPTION.value,
        ErrorType.INVALID_REQUEST.value,
        ErrorType.RESULT_TOO_LARGE.value,
        ErrorType.LOST.value,
    }
)
#: The fields a result frame may carry into the response: exactly one of them.
RESULT_FIELDS = frozenset({"result", "json_result"})
#: At most this many module names of one job are counted (the child sends at most 64).
MAX_IMPORTS = 64
#: A module name longer than this is no module's.
MAX_MODULE_CHARS = 128


class MalformedFrame(ValueError):
    """A frame from the child that the supervisor cannot take; its message is one line."""


def malformed_error(what: str, why: str) -> dict[str, str]:
    """The error (an error frame's fields) that stands for a malformed ``what`` frame."""
    return {
        "kind": ErrorType.USER_EXCEPTION.value,
        "summary": f"the job sent a malformed {what} frame on file descriptor {CHANNEL_FD}: {why}",
        "detail": "",
    }


def result_fields(frame: Mapping[str, Any], max_result_bytes: int) -> dict[str, Any]:
    """The response fields of a RESULT ``frame``: ``{"result": str}`` or ``{"json_result": v}``.

    Raises :class:`MalformedFrame` for anything else: other or missing fields, a ``result``
    that is not a string, a ``json_result`` JSON cannot carry, or a result over
    ``max_result_bytes`` (measured as the child measures it: the string's length, or the
    length of the value's ``repr``).
    """
    fields = frame.get("fields")
    if not isinstance(fields, dict) or len(fields) != 1 or not fields.keys() <= RESULT_FIELDS:
        got = type(fields).__name__
        if isinstance(fields, dict):
            got = ", ".join(sorted(str(key)[:40] for key in list(fields)[:5])) or "none"
        raise MalformedFrame(f"its fields must be one of result or json_result, got {got}")
    if "result" in fields:
        value = fields["result"]
        if not isinstance(value, str):
            raise MalformedFrame(f"result must be a string, got {type(value).__name__}")
        size = len(value)
    else:
        value = fields["json_result"]
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise MalformedFrame(f"json_result is not JSON ({type(exc).__name__})") from None
        size = len(repr(value))
    if size > max_result_bytes:
        raise MalformedFrame(f"a result of {size} bytes is over the {max_result_bytes}-byte limit")
    return dict(fields)


def display_of(frame: Mapping[str, Any]) -> str | None:
    """A RESULT frame's ``display`` (the result as a person reads it), or None if it is none
    or not a string."""
    display = frame.get("display")
    return display if isinstance(display, str) else None


def error_fields(frame: Mapping[str, Any]) -> dict[str, str]:
    """An ERROR ``frame``'s kind, summary and detail, checked: a kind that is not the child's
    to report is ``user_exception``; a summary or detail that is not a string raises
    :class:`MalformedFrame`."""
    kind, summary, detail = frame.get("kind"), frame.get("summary"), frame.get("detail", "")
    for name, value in (("summary", summary), ("detail", detail)):
        if not isinstance(value, str):
            raise MalformedFrame(f"{name} must be a string, got {type(value).__name__}")
    if kind not in CHILD_ERROR_KINDS:
        kind = ErrorType.USER_EXCEPTION.value
    assert isinstance(summary, str) and isinstance(detail, str)
    return {"kind": str(kind), "summary": summary, "detail": detail}


def imported_modules(frame: Mapping[str, Any]) -> list[str]:
    """An IMPORTS ``frame``'s module names that can be top-level modules, each once, at most
    :data:`MAX_IMPORTS`; the rest is dropped (a forged report grows nothing)."""
    modules = frame.get("modules")
    if not isinstance(modules, list):
        return []
    names: dict[str, None] = {}
    for name in modules[: MAX_IMPORTS * 4]:
        if isinstance(name, str) and len(name) <= MAX_MODULE_CHARS and name.isidentifier():
            names[name] = None
            if len(names) >= MAX_IMPORTS:
                break
    return list(names)


def answer_info(frame: Mapping[str, Any]) -> dict[str, Any]:
    """An actor's ``info`` (its pid, and its memory as ``rss_bytes`` and ``peak_rss_bytes``),
    keeping only fields of those names that are non-negative integers; ``{}`` if none."""
    info = frame.get("info")
    if not isinstance(info, dict):
        return {}
    checked: dict[str, Any] = {}
    if _count(info.get("pid")):
        checked["pid"] = info["pid"]
    memory = info.get("memory")
    if isinstance(memory, dict):
        kept = {k: memory[k] for k in ("rss_bytes", "peak_rss_bytes") if _count(memory.get(k))}
        if kept:
            checked["memory"] = kept
    return checked


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
