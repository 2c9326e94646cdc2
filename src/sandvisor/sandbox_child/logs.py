"""Logging in a job is plain Python's logging; what its handlers write to stderr keeps its level.

The root logger is left as plain Python leaves it (no handler, level WARNING), so a job's
``logging.basicConfig``, its handlers, formats and levels behave exactly as under ``python``,
and ``logging.info`` without configuration is hidden as it is there. The one addition: while a
handler handles a record, :func:`current_level` names the record's level, and ``sys.stderr``
(``isolation.StderrRecords``) writes what it is given then as a log record of that level
(``protocol.stdio``): the same text in the same place of the output, and the supervisor's events
still say which lines were logging and at what level.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_state = threading.local()
_plain_handle = logging.Handler.handle


def current_level() -> str | None:
    """The level name of the record a handler of this thread is handling, else None."""
    return getattr(_state, "level", None)


def _handle(self: logging.Handler, record: logging.LogRecord) -> Any:
    outer = current_level()  # a handler may log while it handles (handleError, a nested logger)
    _state.level = record.levelname
    try:
        return _plain_handle(self, record)
    finally:
        _state.level = outer


def mark_levels() -> None:
    """Make every handler's output carry its record's level (idempotent).

    Done in the template, before it forks, so no job pays for it; a spawned job does it itself.
    A handler class that overrides ``handle`` is not seen: its lines are plain stderr.
    """
    logging.Handler.handle = _handle  # type: ignore[method-assign]
