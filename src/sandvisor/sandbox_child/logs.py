"""Logging records of user code go to the job's output, in program order, with their level.

Each record is written to fd 2 (where ``logging`` writes under plain Python) as log records of
``protocol.stdio``, at once and in single atomic writes: it lands in the one output pipe between
what was printed before and after it, and the supervisor reads its level back.
"""

from __future__ import annotations

import logging

from sandvisor.protocol import stdio

#: The descriptor records go to: stderr, which shares its pipe with stdout.
LOG_FD = 2


class RecordWriter(logging.Handler):
    """Writes each record to ``fd`` as it is emitted; nothing is buffered in the process."""

    def __init__(self, fd: int = LOG_FD) -> None:
        super().__init__()
        self._fd = fd
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stdio.write_records(self._fd, stdio.log_records(record.levelname, text))
        except Exception:
            self.handleError(record)


#: A handler a template made before forking (:func:`prepare`); the job it forks only attaches it.
_prepared: RecordWriter | None = None


def prepare() -> None:
    """Build the handler now, in a template: a forked job would pay for it in page copies.

    It is not attached to anything until a job installs it, in its own child.
    """
    global _prepared
    _prepared = RecordWriter()


def install_log_forwarding() -> None:
    """Root logger to INFO through our handler, so ``logging.info`` in a job is seen, as users expect."""
    global _prepared
    handler, _prepared = _prepared or RecordWriter(), None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
