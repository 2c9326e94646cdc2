"""Turning a job's output into lines as it arrives, and keeping a bounded copy for the response."""

from __future__ import annotations

import codecs
from typing import Literal

from sandvisor.protocol import stdio

#: A line longer than this is passed on in pieces rather than held back.
MAX_PENDING_LINE = 64 * 1024


class LineSplitter:
    """Bytes in any chunking -> text made of whole lines (a very long line in pieces)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> str:
        text = self._pending + self._decoder.decode(data)
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < MAX_PENDING_LINE:
            self._pending = text
            return ""
        if cut == 0:
            cut = len(text)
        self._pending = text[cut:]
        return text[:cut]

    def finish(self) -> str:
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return text

    @property
    def has_pending(self) -> bool:
        """Whether part of a line (or of a character) is held back."""
        return bool(self._pending) or bool(self._decoder.getstate()[0])


TextStream = Literal["stdout", "stderr"]
#: What the output pipe said, in order: ``("stdout"|"stderr", text, None)`` or
#: ``("log", message, level)``.
Piece = tuple[Literal["stdout", "stderr", "log"], str, str | None]


class OutputDemux:
    """A job's one output pipe (fds 1 and 2), in any chunking -> pieces in program order.

    Plain bytes are stdout; ``protocol.stdio`` records are what ``sys.stderr`` wrote and logging
    records. Text comes in whole lines, except that a partial line is given out as it is when
    the other stream or a logging record follows it (so order is kept) and at :meth:`finish`.
    """

    def __init__(self) -> None:
        self._held = b""  # the start of a record (or of MAGIC) that the next read completes
        self._lines: dict[TextStream, LineSplitter] = {
            "stdout": LineSplitter(),
            "stderr": LineSplitter(),
        }
        self._partial: TextStream | None = None  # the stream whose line is unfinished
        self._log_level = ""
        self._log_parts: list[bytes] = []  # pieces of a logging record still to come whole

    def feed(self, data: bytes) -> list[Piece]:
        """The pieces ``data`` completes, in order."""
        out: list[Piece] = []
        buffer = self._held + data if self._held else data
        self._held = b""
        position = 0
        while True:
            at = stdio.find_magic(buffer, position)
            if at < 0:
                # What may start a record is held back, but never bytes already read: a record's
                # payload can end like the start of MAGIC.
                end = max(position, len(buffer) - stdio.magic_prefix_at_end(buffer))
                self._text(
                    "stdout",
                    buffer if position == 0 and end == len(buffer) else buffer[position:end],
                    out,
                )
                self._held = buffer[end:]
                return out
            if at > position:
                self._text("stdout", buffer[position:at], out)
            header = stdio.parse_header(buffer, at)
            if header is True:
                self._held = buffer[at:]
                return out
            if header is False:
                self._text("stdout", buffer[at : at + 1], out)
                position = at + 1
                continue
            kind, length = header
            start = at + stdio.HEADER_SIZE
            position = start + length
            self._record(kind, buffer[start:position], out)

    def finish(self) -> list[Piece]:
        """Everything still held: bytes of an unfinished record as plain output, the partial
        line. The demux can go on being fed afterwards (an actor's next call)."""
        out: list[Piece] = []
        held, self._held = self._held, b""
        if held:
            self._text("stdout", held, out)
        self._end_log(out)
        self._end_partial(out)
        return out

    def _text(self, stream: TextStream, data: bytes, out: list[Piece]) -> None:
        if not data:
            return
        if self._partial not in (None, stream):
            self._end_partial(out)
        lines = self._lines[stream]
        if text := lines.feed(data):
            out.append((stream, text, None))
        self._partial = stream if lines.has_pending else None

    def _end_partial(self, out: list[Piece]) -> None:
        if self._partial is not None:
            if text := self._lines[self._partial].finish():
                out.append((self._partial, text, None))
            self._partial = None

    def _record(self, kind: bytes, payload: bytes, out: list[Piece]) -> None:
        if kind == stdio.STDERR:
            self._text("stderr", payload, out)
            return
        self._end_partial(out)  # the line printed before the record is out first
        level, _, message = payload.partition(stdio.LEVEL_SEPARATOR)
        self._log_level = level.decode("utf-8", "replace")
        self._log_parts.append(message)
        if kind == stdio.LOG or sum(map(len, self._log_parts)) > MAX_PENDING_LINE:
            self._end_log(out)

    def _end_log(self, out: list[Piece]) -> None:
        if self._log_parts:
            message = b"".join(self._log_parts).decode("utf-8", "replace")
            self._log_parts = []
            out.append(("log", message, self._log_level))


class OutputBuffer:
    """Keeps the first and the last ``limit // 2`` bytes (of UTF-8) of everything appended.

    What falls in between is dropped and counted, so a job that prints a gigabyte costs the
    supervisor a bounded amount of memory and the response says how much was left out.
    A character is kept whole or dropped whole.
    """

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head: list[str] = []
        self._head_size = 0
        self._tail: list[str] = []
        self._tail_size = 0
        self.dropped = 0  # bytes
        self.total = 0  # bytes of everything appended, kept or not

    def append(self, text: str) -> None:
        size = utf8_size(text)
        self.total += size
        room = self._head_limit - self._head_size
        if room > 0:
            piece = text[:room] if size == len(text) else _utf8_head(text, room)
            self._head.append(piece)
            self._head_size += utf8_size(piece)
            text = text[len(piece) :]
            size = utf8_size(text)
        if not text:
            return
        self._tail.append(text)
        self._tail_size += size
        if self._tail_size > 2 * self._tail_limit + 4096:
            self._trim_tail()

    def _trim_tail(self) -> None:
        joined = "".join(self._tail)
        size = utf8_size(joined)
        if size > self._tail_limit:
            kept = _utf8_tail(joined, self._tail_limit)
            kept_size = utf8_size(kept)
            self.dropped += size - kept_size
            joined, size = kept, kept_size
        self._tail = [joined]
        self._tail_size = size

    @property
    def truncated(self) -> bool:
        self._trim_tail()
        return self.dropped > 0

    def text(self) -> str:
        self._trim_tail()
        head = "".join(self._head)
        tail = "".join(self._tail)
        if not self.dropped:
            return head + tail
        marker = f"\n[sandvisor] ... {self.dropped} bytes of output dropped ...\n"
        return head + marker + tail


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counts its 3 bytes)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _utf8_head(text: str, limit: int) -> str:
    """The longest start of ``text`` of at most ``limit`` bytes, whole characters only."""
    data = text.encode("utf-8", "surrogatepass")[:limit]
    for cut in range(4):  # a character is at most 4 bytes: drop one cut short at the end
        try:
            return data[: len(data) - cut].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            continue
    return ""


def _utf8_tail(text: str, limit: int) -> str:
    """The longest end of ``text`` of at most ``limit`` bytes, whole characters only."""
    data = text.encode("utf-8", "surrogatepass")[-limit:] if limit else b""
    start = 0
    while start < len(data) and data[start] & 0xC0 == 0x80:  # inside a character: skip on
        start += 1
    return data[start:].decode("utf-8", "surrogatepass")
