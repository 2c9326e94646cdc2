"""The child's end of its job channel: frames out, from any thread, one whole frame at a time."""

from __future__ import annotations

import os
import threading

from sandvisor.protocol.frames import Frame, encode_frame, read_frame, write_encoded


class Unencodable(ValueError):
    """A frame msgpack cannot encode (a lone surrogate, an int over 64 bits, nesting too deep);
    nothing was written, the channel is intact. ``__cause__`` is msgpack's own error."""


class ChannelReplaced(OSError):
    """The channel's descriptor is no longer the channel: the job put another file there
    (``os.dup2`` over it, or closed it and opened something that took its number)."""


class Channel:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._identity: tuple[int, int] | None = None

    def pin(self) -> None:
        """Remember what the descriptor is now: from then on a frame is never written to
        anything else (a file the job opened, ``/dev/null`` it put there)."""
        self._identity = _identity(self.fd)

    def send(self, frame: Frame) -> None:
        """Write ``frame`` whole. Raises :class:`Unencodable` before writing anything for a frame
        msgpack refuses, :class:`ChannelReplaced` for a descriptor that is no longer the pinned
        channel, ``OSError`` for a channel that is closed or broken."""
        try:
            data = encode_frame(frame)
        except Exception as exc:
            raise Unencodable(f"{type(exc).__name__}: {exc}") from exc
        # The logging handler may send from user threads while the main thread sends the result.
        with self._lock:
            if self._identity is not None and _identity(self.fd) != self._identity:
                raise ChannelReplaced(
                    f"file descriptor {self.fd} is no longer the protocol channel"
                )
            write_encoded(self.fd, data)

    def receive(self) -> Frame:
        return read_frame(self.fd)


def _identity(fd: int) -> tuple[int, int]:
    """What ``fd`` refers to (device, inode); raises ``OSError`` for a closed descriptor."""
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino
