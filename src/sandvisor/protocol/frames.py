"""Length-prefixed msgpack frames: the pipe between the supervisor and a child.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack encoding one map
with a string ``"t"`` (its type). Both sides use this module; it imports only stdlib and msgpack,
because the child must start fast inside any user venv.

A clean end of stream between frames is :class:`EndOfStream`; an end in the middle of a frame, a
length over the bound, or bytes that are not a msgpack map are :class:`FrameError`. A reader never
waits for more than one bounded frame and never allocates more than ``max_frame_bytes``.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

from sandvisor.protocol.messages import KIND

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024

Frame = dict[str, Any]


class FrameError(Exception):
    """The stream broke the framing rules: truncated, oversized or not a frame at all."""


class EndOfStream(Exception):
    """The peer closed the stream cleanly, between two frames."""


def encode_frame(frame: Frame) -> bytes:
    body = msgpack.packb(frame, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes | memoryview) -> Frame:
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise FrameError(f"frame body is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get(KIND), str):
        raise FrameError(f"frame is not a map with a string {KIND!r} (got {type(frame).__name__})")
    return frame


def check_length(length: int, max_frame_bytes: int) -> None:
    if length > max_frame_bytes:
        raise FrameError(f"frame of {length} bytes is over the {max_frame_bytes}-byte bound")


class FrameDecoder:
    """Incremental decoder for bytes arriving in arbitrary chunks: the supervisor's one reader.

    Fed whatever a pipe gave (``feed``), or exactly what it asks for (``wanted``), which is how
    ``supervisor.channel.read_frame_async`` reads one frame at a time from a stream.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next ``data`` (any size, cut anywhere); the frames it completed, in order.

        Bytes of a frame not yet complete are kept for the next call. Raises :class:`FrameError`
        for a frame over ``max_frame_bytes`` (as soon as its header arrives, before its body is
        buffered) or a body that is not a msgpack map with a string ``t``; the decoder is then
        unusable, since the stream has lost its framing.
        """
        self._buffer += data
        frames: list[Frame] = []
        start = 0
        # Bodies are decoded in place (a frame may be hundreds of MiB: no copy of it), and the
        # decoded bytes are dropped once, after the view is released.
        with memoryview(self._buffer) as view:
            while len(view) - start >= HEADER.size:
                (length,) = HEADER.unpack_from(view, start)
                check_length(length, self._max)
                end = start + HEADER.size + length
                if len(view) < end:
                    break
                frames.append(decode_body(view[start + HEADER.size : end]))
                start = end
        del self._buffer[:start]
        return frames

    def wanted(self) -> int:
        """How many more bytes complete the next header, or else the frame it announced.

        A reader that feeds exactly this many at a time never reads past the frame it is on, so
        what follows that frame stays in the stream for the next reader.
        """
        if len(self._buffer) < HEADER.size:
            return HEADER.size - len(self._buffer)
        (length,) = HEADER.unpack_from(self._buffer)
        return HEADER.size + length - len(self._buffer)

    def close(self) -> None:
        """Call at end of stream: raises if it ended inside a frame."""
        pending = len(self._buffer)
        if not pending:
            return
        if pending < HEADER.size:
            raise FrameError(
                f"end of stream inside a frame header ({pending} of {HEADER.size} bytes)"
            )
        (length,) = HEADER.unpack_from(self._buffer)
        raise FrameError(
            f"end of stream inside a frame ({pending - HEADER.size} of {length} bytes)"
        )


def _read_exactly(fd: int, size: int, at_boundary: bool) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1024 * 1024))
        if not chunk:
            if at_boundary and remaining == size:
                raise EndOfStream()
            raise FrameError("end of stream inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Blocking read of one frame from a file descriptor (the child's side)."""
    (length,) = HEADER.unpack(_read_exactly(fd, HEADER.size, at_boundary=True))
    check_length(length, max_frame_bytes)
    return decode_body(_read_exactly(fd, length, at_boundary=False))


def write_frame(fd: int, frame: Frame) -> None:
    """Blocking write of one whole frame to a file descriptor."""
    write_encoded(fd, encode_frame(frame))


def write_encoded(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (a frame :func:`encode_frame` made) to ``fd``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
