"""The supervisor's end of a frame stream: async reads by the one frame decoder there is.

Reads go through :class:`~sandvisor.protocol.frames.FrameDecoder`, the decoder the job's pipe
reader feeds too, so framing, bounds and errors have one definition on the supervisor's side.
"""

from __future__ import annotations

import asyncio

from sandvisor.protocol.frames import DEFAULT_MAX_FRAME_BYTES, EndOfStream, Frame, FrameDecoder


async def read_frame_async(
    reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Frame:
    """One frame; EndOfStream at a clean end, FrameError for truncation, oversize or garbage.

    Reads exactly the bytes of one frame (its header, then the body it announced), so the next
    frame stays in ``reader`` for the next call, and no decoder state outlives the call.
    """
    decoder = FrameDecoder(max_frame_bytes)
    while True:
        try:
            chunk = await reader.readexactly(decoder.wanted())
        except asyncio.IncompleteReadError as exc:
            decoder.feed(exc.partial)  # less than it wanted: completes no frame
            decoder.close()  # raises FrameError if the stream ended inside this frame
            raise EndOfStream() from None
        frames = decoder.feed(chunk)
        if frames:
            return frames[0]
