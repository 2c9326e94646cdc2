"""Turning a job's output into lines as it arrives, and keeping a bounded copy for the response."""

from __future__ import annotations

import codecs

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


class OutputBuffer:
    """Keeps the first and the last ``limit // 2`` characters of everything appended.

    What falls in between is dropped and counted, so a job that prints a gigabyte costs the
    supervisor a bounded amount of memory and the response says how much was left out.
    """

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head: list[str] = []
        self._head_size = 0
        self._tail: list[str] = []
        self._tail_size = 0
        self.dropped = 0
        self.total = 0  # everything appended, kept or not

    def append(self, text: str) -> None:
        self.total += len(text)
        room = self._head_limit - self._head_size
        if room > 0:
            piece = text[:room]
            self._head.append(piece)
            self._head_size += len(piece)
            text = text[room:]
        if not text:
            return
        self._tail.append(text)
        self._tail_size += len(text)
        if self._tail_size > 2 * self._tail_limit + 4096:
            self._trim_tail()

    def _trim_tail(self) -> None:
        joined = "".join(self._tail)
        excess = len(joined) - self._tail_limit
        if excess > 0:
            self.dropped += excess
            joined = joined[excess:]
        self._tail = [joined]
        self._tail_size = len(joined)

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
        marker = f"\n[sandvisor] ... {self.dropped} characters of output dropped ...\n"
        return head + marker + tail
