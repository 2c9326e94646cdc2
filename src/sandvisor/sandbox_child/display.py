"""A job's result as a person reads it, made in the child so that no caller unpickles it."""

from __future__ import annotations

import json
from typing import Any

from sandvisor.protocol.text import exception_line, wire_safe

DISPLAY_LIMIT = 64 * 1024


def display_of(value: Any) -> str:
    """The result as a person reads it (pretty JSON, else repr), made here so no caller unpickles.

    Never raises but ``SystemExit``: a ``__repr__`` that raises anything (a KeyboardInterrupt
    included) gives ``<unrepresentable Type: Error: message>``. The text always encodes as UTF-8.
    """
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    except Exception:  # not JSON (TypeError, ValueError), or too deep for it (RecursionError)
        try:
            text = repr(value)
        except SystemExit:
            raise
        except BaseException as exc:  # the value's own __repr__ failed: say so, as the display
            text = f"<unrepresentable {type(value).__name__}: {exception_line(exc)}>"
    text = wire_safe(text)
    return text if len(text) <= DISPLAY_LIMIT else text[:DISPLAY_LIMIT] + "\n... (cut)"
