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


def install_log_forwarding(channel: Channel) -> None:
    """Root logger to INFO through our handler, so ``logging.info`` in a job is seen, as users expect."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(FrameHandler(channel))
    root.setLevel(logging.INFO)
