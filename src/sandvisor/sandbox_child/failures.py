"""How a job fails inside its child: a classified failure, and the traceback a user should see.

Whatever the job's code raises is the job's answer, as under ``python``: any exception, a
``KeyboardInterrupt``, a ``GeneratorExit`` or a class of its own derived from ``BaseException``
included. Only ``SystemExit`` is not an answer but an exit (the runner leaves with its code).
Reporting runs user hooks too (``__str__`` of the exception): what they raise is reported as
plain Python prints it, never lets the report fail.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterator

from sandvisor.protocol.text import exception_line, safe_str, wire_safe

#: How many entries of a traceback CPython's printer shows when ``sys.tracebacklimit`` is unset.
TRACEBACK_LIMIT = 1000


class JobFailure(Exception):
    """A failure already classified for the supervisor: kind, one-line summary, detail."""

    def __init__(self, kind: str, summary: str, detail: str = "") -> None:
        super().__init__(summary)
        self.kind = kind
        self.summary = summary
        self.detail = detail


def invalid(summary: str, detail: str = "") -> JobFailure:
    return JobFailure("invalid_request", summary, detail)


@contextlib.contextmanager
def user_code(user_files: set[str]) -> Iterator[None]:
    """Run the block as the job's code: anything it raises but ``SystemExit`` is the job's
    failure (a :class:`JobFailure` of kind ``user_exception``), raised without our frames."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:  # the job's own ending, whatever its class
        raise user_failure(exc, user_files) from None


def user_failure(exc: BaseException, user_files: set[str]) -> JobFailure:
    """The failure of a job that raised ``exc``: ``Type: first line`` and its traceback.

    Never raises: a ``__str__`` that fails reads ``<exception str() failed>``, as plain Python
    prints it, and a traceback that cannot be formatted is replaced by a line saying why.
    """
    return JobFailure("user_exception", exception_line(exc), user_traceback(exc, user_files))


def user_traceback(exc: BaseException, user_files: set[str]) -> str:
    """The traceback from the first frame of user code on: our own frames are noise to the user.

    As CPython's printer shows it: the last ``sys.tracebacklimit`` (default 1000) entries, so a
    deep recursion costs what it costs plain Python, not a walk over every one of its frames.
    """
    start = _first_frame(exc.__traceback__, lambda name: name in user_files)
    start = start or _first_frame(exc.__traceback__, lambda name: not name.startswith(_RUNTIME_DIR))
    limit = _traceback_limit()
    start = _last_entries(start or exc.__traceback__, limit)
    try:
        text = "".join(traceback.format_exception(type(exc), exc, start, limit=-limit))
    except BaseException as error:  # a user hook (a __notes__ property, ...) broke the formatter
        text = f"{exception_line(exc)}\n(its traceback could not be formatted: {safe_str(error)})"
    return wire_safe(text)


def _traceback_limit() -> int:
    """``sys.tracebacklimit`` as CPython's printer reads it: unset is 1000, below 1 none."""
    limit = getattr(sys, "tracebacklimit", TRACEBACK_LIMIT)
    if not isinstance(limit, int):
        return TRACEBACK_LIMIT
    return max(limit, 0)


def _last_entries(tb: types.TracebackType | None, limit: int) -> types.TracebackType | None:
    """The entry ``limit`` entries before the end of ``tb``'s chain (all of it if shorter)."""
    depth = 0
    entry = tb
    while entry is not None:
        depth += 1
        entry = entry.tb_next
    for _ in range(depth - limit):
        assert tb is not None
        tb = tb.tb_next
    return tb


def _first_frame(
    tb: types.TracebackType | None, wanted: Callable[[str], bool]
) -> types.TracebackType | None:
    while tb is not None and not wanted(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
