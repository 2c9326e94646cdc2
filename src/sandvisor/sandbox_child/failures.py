"""How a job fails inside its child: a classified failure, and the traceback a user should see."""

from __future__ import annotations

import os
import traceback
import types
from collections.abc import Callable


class JobFailure(Exception):
    """A failure already classified for the supervisor: kind, one-line summary, detail."""

    def __init__(self, kind: str, summary: str, detail: str = "") -> None:
        super().__init__(summary)
        self.kind = kind
        self.summary = summary
        self.detail = detail


def invalid(summary: str, detail: str = "") -> JobFailure:
    return JobFailure("invalid_request", summary, detail)


def user_failure(exc: BaseException, user_files: set[str]) -> JobFailure:
    message = str(exc).strip().splitlines()
    summary = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    return JobFailure("user_exception", summary, user_traceback(exc, user_files))


def user_traceback(exc: BaseException, user_files: set[str]) -> str:
    """The traceback from the first frame of user code on: our own frames are noise to the user."""
    start = _first_frame(exc.__traceback__, lambda name: name in user_files)
    start = start or _first_frame(exc.__traceback__, lambda name: not name.startswith(_RUNTIME_DIR))
    return "".join(traceback.format_exception(type(exc), exc, start or exc.__traceback__))


def _first_frame(
    tb: types.TracebackType | None, wanted: Callable[[str], bool]
) -> types.TracebackType | None:
    while tb is not None and not wanted(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
