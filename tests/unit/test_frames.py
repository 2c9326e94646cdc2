import asyncio
import os
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandvisor.protocol.frames import (
    EndOfStream,
    FrameError,
    encode_frame,
    read_frame,
    write_frame,
)
from sandvisor.supervisor.channel import read_frame_async

frames = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.none(),
        st.integers(-(2**63), 2**63 - 1),
        st.text(),
        st.binary(),
        st.floats(allow_nan=False),
    ),
    max_size=5,
).map(lambda body: {**body, "t": "log"})


def pipe_with(data: bytes) -> int:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    return read_fd


@given(st.lists(frames, max_size=5))
@settings(max_examples=50, deadline=None)
def test_frames_round_trip_through_a_pipe(sent):
    read_fd, write_fd = os.pipe()
    for frame in sent:
        write_frame(write_fd, frame)
    os.close(write_fd)
    try:
        received = [read_frame(read_fd) for _ in sent]
        with pytest.raises(EndOfStream):
            read_frame(read_fd)
    finally:
        os.close(read_fd)
    assert received == sent


def test_a_stream_that_ends_inside_a_frame_is_an_error_not_a_hang():
    data = encode_frame({"t": "result", "fields": {"result": "x" * 100}})
    fd = pipe_with(data[:-10])
    with pytest.raises(FrameError, match="end of stream inside a frame"):
        read_frame(fd)
    os.close(fd)


def test_a_length_over_the_bound_is_refused_before_reading_the_body():
    fd = pipe_with(struct.pack(">I", 2**31) + b"x")
    with pytest.raises(FrameError, match="over the 1024-byte bound"):
        read_frame(fd, max_frame_bytes=1024)
    os.close(fd)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1\xc1\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"no_type": 1}),
        msgpack.packb({"t": 5}),
    ],
    ids=["garbage", "not-a-map", "no-type", "type-not-a-string"],
)
def test_bodies_that_are_not_frames_are_errors(body):
    fd = pipe_with(struct.pack(">I", len(body)) + body)
    with pytest.raises(FrameError):
        read_frame(fd)
    os.close(fd)


async def read_all_async(data: bytes, max_frame_bytes: int = 1 << 20) -> list[dict]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out = []
    while True:
        try:
            out.append(await read_frame_async(reader, max_frame_bytes))
        except EndOfStream:
            return out


async def test_the_async_reader_follows_the_same_rules():
    good = encode_frame({"t": "log", "msg": "a"}) + encode_frame({"t": "log", "msg": "b"})
    assert [frame["msg"] for frame in await read_all_async(good)] == ["a", "b"]
    with pytest.raises(FrameError, match="inside a frame"):
        await read_all_async(good[:-1])
    with pytest.raises(FrameError, match="inside a frame header"):
        await read_all_async(good[:2])
    with pytest.raises(FrameError, match="bound"):
        await read_all_async(good, max_frame_bytes=4)
