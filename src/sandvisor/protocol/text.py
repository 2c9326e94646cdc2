"""Text that describes user objects safely: whatever their hooks do, a line comes out.

Both sides use it (stdlib only). A user's exception may have a ``__str__`` that raises or returns
something else than a string; a message may hold lone surrogates that no UTF-8 encoder (nor
msgpack) accepts. Plain Python's own printers cope with both, and so must every line we write.
"""

from __future__ import annotations

#: What plain Python prints for an exception whose ``str()`` fails (``traceback._safe_string``).
STR_FAILED = "<exception str() failed>"


def safe_str(value: object) -> str:
    """``str(value)``, or :data:`STR_FAILED` when that raises anything at all.

    Any exception a user's ``__str__`` raises, a ``KeyboardInterrupt`` or ``SystemExit``
    included, is swallowed, as CPython's traceback printer does: the value is being reported,
    and its report must not fail.
    """
    try:
        return str(value)
    except BaseException:  # a user hook's failure is reported, never propagated
        return STR_FAILED


def wire_safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as backslash escapes.

    The same text that plain Python's ``sys.stderr`` (``errors="backslashreplace"``) prints;
    the result always encodes as UTF-8, so it can go into a msgpack frame.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone for an empty message), wire-safe."""
    lines = safe_str(exc).strip().splitlines()
    name = type(exc).__name__
    return wire_safe(f"{name}: {lines[0]}" if lines else name)
