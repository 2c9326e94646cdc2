"""The child's end of its job channel: frames out, from any thread, one whole frame at a time."""

from __future__ import annotations

import threading

from sandvisor.protocol.frames import Frame, read_frame, write_frame


class Channel:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        # The logging handler may send from user threads while the main thread sends the result.
        with self._lock:
            write_frame(self.fd, frame)

    def receive(self) -> Frame:
        return read_frame(self.fd)
