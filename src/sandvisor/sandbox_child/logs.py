"""Logging records of user code go to the supervisor as ``log`` frames, with their level."""

from __future__ import annotations

import logging

from sandvisor.sandbox_child.channel import Channel


class FrameHandler(logging.Handler):
    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self._channel.send(
                {
                    "t": "log",
                    "level": record.levelname,
                    "logger": record.name,
                    "msg": text,
                    "ts": record.created,
                }
            )
        except Exception:
            self.handleError(record)


#: A handler a template made before forking (:func:`prepare`); the job it forks only attaches it.
_prepared: FrameHandler | None = None


def prepare() -> None:
    """Build the handler now, in a template: a forked job would pay for it in page copies.

    It is not attached to anything and has no channel until a job installs it, in its own child.
    """
    global _prepared
    _prepared = FrameHandler(Channel(-1))


def install_log_forwarding(channel: Channel) -> None:
    """Root logger to INFO through our handler, so ``logging.info`` in a job is seen, as users expect."""
    global _prepared
    prepared, _prepared = _prepared, None
    if prepared is None:
        prepared = FrameHandler(channel)
    else:
        prepared._channel = channel  # the job's own channel: one lock for all its frames
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(prepared)
    root.setLevel(logging.INFO)
