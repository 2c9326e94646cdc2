from hypothesis import given, settings
from hypothesis import strategies as st

from sandvisor.protocol import stdio
from sandvisor.supervisor.output import MAX_PENDING_LINE, LineSplitter, OutputBuffer, OutputDemux


@given(st.text(), st.lists(st.integers(1, 7), min_size=1))
@settings(max_examples=100, deadline=None)
def test_lines_come_out_whole_whatever_the_chunking(text, sizes):
    data = text.encode()
    splitter = LineSplitter()
    pieces, position, turn = [], 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        pieces.append(splitter.feed(data[position : position + size]))
        position += size
        turn += 1
    pieces.append(splitter.finish())
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1] if piece)


def test_a_line_longer_than_the_bound_is_passed_on_in_pieces():
    splitter = LineSplitter()
    assert splitter.feed(b"x" * (MAX_PENDING_LINE + 1)) == "x" * (MAX_PENDING_LINE + 1)


def test_output_keeps_head_and_tail_and_counts_what_it_dropped():
    buffer = OutputBuffer(limit=100)
    for index in range(1000):
        buffer.append(f"{index:04d}\n")
    text = buffer.text()
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert buffer.dropped == 5000 - 100
    assert f"{buffer.dropped} bytes of output dropped" in text


def test_output_under_the_limit_is_kept_whole():
    buffer = OutputBuffer(limit=1000)
    buffer.append("hello\n")
    assert buffer.text() == "hello\n" and not buffer.truncated


Segment = tuple[str, str, str | None]  # stream, text, level


def encoded(segments: list[Segment]) -> bytes:
    """The bytes a job's output pipe holds for ``segments``, made as the child makes them."""
    data = b""
    for stream, text, level in segments:
        if stream == "stdout":
            data += text.encode()
        elif stream == "stderr":
            data += b"".join(stdio.stderr_records(text.encode()))
        else:
            data += b"".join(stdio.log_records(level or "INFO", text.encode()))
    return data


def joined(pieces: list[Segment]) -> list[Segment]:
    """Consecutive text of one stream joined: how it is cut into pieces is not the job's doing."""
    out: list[Segment] = []
    for stream, text, level in pieces:
        if out and stream != "log" and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + text, None)
        elif text or stream == "log":
            out.append((stream, text, level))
    return out


def demuxed(data: bytes, sizes: list[int]) -> list[Segment]:
    demux = OutputDemux()
    pieces: list[Segment] = []
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        pieces += demux.feed(data[position : position + size])
        position += size
        turn += 1
    return pieces + demux.finish()


segments = st.lists(
    st.one_of(
        st.tuples(st.just("stdout"), st.text(min_size=1), st.none()),
        st.tuples(st.just("stderr"), st.text(min_size=1), st.none()),
        st.tuples(st.just("log"), st.text(), st.sampled_from(["INFO", "WARNING", "TRACE 5"])),
    )
)


@given(segments, st.lists(st.integers(1, 5000), min_size=1))
@settings(max_examples=200, deadline=None)
def test_one_pipe_gives_back_every_stream_in_order_whatever_the_chunking(parts, sizes):
    assert joined(demuxed(encoded(parts), sizes)) == joined(parts)


def test_a_log_record_longer_than_one_atomic_write_comes_back_whole():
    message = "é" * (3 * stdio.PAYLOAD_MAX)
    records = list(stdio.log_records("ERROR", message.encode()))
    assert len(records) > 1 and all(len(record) <= stdio.RECORD_MAX for record in records)
    assert demuxed(b"".join(records), [4096]) == [("log", message, "ERROR")]


def test_a_partial_line_goes_out_before_what_another_stream_writes_after_it():
    data = b"step 3/5 " + b"".join(stdio.log_records("INFO", b"saved"))
    assert OutputDemux().feed(data) == [("stdout", "step 3/5 ", None), ("log", "saved", "INFO")]


def test_bytes_that_only_look_like_a_record_are_plain_output():
    fake = stdio.MAGIC + b"Zzzzz;" + stdio.MAGIC + b"E12"
    assert joined(demuxed(fake + b"\n", [3])) == [("stdout", (fake + b"\n").decode(), None)]


def test_the_start_of_a_record_at_the_end_of_output_is_not_lost():
    demux = OutputDemux()
    assert demux.feed(b"done\n\x00\x1b") == [("stdout", "done\n", None)]
    assert demux.finish() == [("stdout", "\x00\x1b", None)]


def test_a_run_of_nuls_is_plain_output_and_a_record_after_it_still_counts():
    zeros = b"\x00" * 10_000 + b"\x00\x1b"  # binary output, ending like the start of MAGIC
    data = zeros + b"".join(stdio.log_records("INFO", b"after")) + b"tail\n"
    assert joined(demuxed(data, [333])) == [
        ("stdout", zeros.decode(), None),
        ("log", "after", "INFO"),
        ("stdout", "tail\n", None),
    ]


def test_the_output_limit_counts_bytes_of_utf8_and_keeps_characters_whole():
    buffer = OutputBuffer(limit=100)
    for _ in range(1000):
        buffer.append("é€😀\n")  # 2 + 3 + 4 + 1 bytes, 4 characters
    text = buffer.text()
    head, _, rest = text.partition("\n[sandvisor] ... ")
    tail = rest.partition(" dropped ...\n")[2]
    assert len(head.encode()) <= 50 and len(tail.encode()) <= 50
    assert head.startswith("é€😀\né€😀\n") and tail.endswith("é€😀\n")
    assert buffer.total == 10 * 1000
    kept = len(head.encode()) + len(tail.encode())
    assert buffer.dropped == buffer.total - kept
    assert f"{buffer.dropped} bytes of output dropped" in text


def test_a_record_whose_payload_ends_like_the_start_of_a_record_is_read_once():
    # Found by the property above: the payload's last byte was held back as the start of the
    # next record, and came out a second time as stdout.
    data = b"".join(stdio.stderr_records(b"\x00")) + b"".join(stdio.log_records("INFO", b"\x00"))
    for size in (1, 2, len(data)):
        assert joined(demuxed(data, [size])) == [("stderr", "\x00", None), ("log", "\x00", "INFO")]
