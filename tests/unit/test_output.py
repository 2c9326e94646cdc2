from hypothesis import given, settings
from hypothesis import strategies as st

from sandvisor.supervisor.output import MAX_PENDING_LINE, LineSplitter, OutputBuffer


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
    assert f"{buffer.dropped} characters of output dropped" in text


def test_output_under_the_limit_is_kept_whole():
    buffer = OutputBuffer(limit=1000)
    buffer.append("hello\n")
    assert buffer.text() == "hello\n" and not buffer.truncated
