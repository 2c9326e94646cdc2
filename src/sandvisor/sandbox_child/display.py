"""A job's result as a person reads it, made in the child so that no caller unpickles it."""

from __future__ import annotations

import json
from typing import Any

DISPLAY_LIMIT = 64 * 1024


def display_of(value: Any) -> str:
    """The result as a person reads it (pretty JSON, else repr), made here so no caller unpickles."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except Exception as exc:
            text = f"<unrepresentable {type(value).__name__}: {exc}>"
    return text if len(text) <= DISPLAY_LIMIT else text[:DISPLAY_LIMIT] + "\n... (cut)"
