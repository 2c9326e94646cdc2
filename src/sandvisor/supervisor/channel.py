"""The supervisor's end of a frame stream: async reads with the same rules as the child's side."""

from __future__ import annotations

import asyncio

from sandvisor.protocol.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    EndOfStream,
    Frame,
    FrameError,
    check_length,
    decode_body,
)


async def read_frame_async(
    reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Frame:
    """One frame; EndOfStream at a clean end, FrameError for truncation, oversize or garbage."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EndOfStream() from None
        raise FrameError("end of stream inside a frame header") from None
    (length,) = HEADER.unpack(header)
    check_length(length, max_frame_bytes)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(
            f"end of stream inside a frame ({len(exc.partial)} of {length} bytes)"
        ) from None
    return decode_body(body)
