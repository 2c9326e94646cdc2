"""Records in a job's output pipe: how stderr text and logging records travel in program order.

A job's fds 1 and 2 are one pipe, so the kernel keeps every write to either in the order it was
made, whoever made it (``print``, ``sys.stderr``, ``logging``, a subprocess, C code). What a
single pipe cannot say is which descriptor wrote: so what Python's ``sys.stderr`` writes, and
each logging record, goes in-band as a *record*, one ``write`` of at most ``PIPE_BUF`` bytes
(atomic against every other writer of the pipe)::

    MAGIC  kind  length (4 hex digits)  ";"  payload (length bytes)

``E``: the payload is bytes ``sys.stderr`` wrote. ``L``: a logging record, its level name, US
(0x1f), its message; ``l``: a piece of a record too long for one write, continued by the next
``l`` or ``L`` record. Everything else in the pipe is plain output. A header that does not parse
is plain output too, so no byte a job writes is ever dropped. Both sides import this module, so
it uses the standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

MAGIC = b"\x00\x1bsv"
STDERR = b"E"
LOG = b"L"
LOG_CONTINUED = b"l"
KINDS = frozenset((STDERR, LOG, LOG_CONTINUED))
LEVEL_SEPARATOR = b"\x1f"
HEADER_SIZE = len(MAGIC) + 1 + 4 + 1
#: Linux's PIPE_BUF: a write of up to this many bytes to a pipe is never interleaved.
RECORD_MAX = 4096
PAYLOAD_MAX = RECORD_MAX - HEADER_SIZE
_HEX_DIGITS = frozenset(b"0123456789abcdef")


def record(kind: bytes, payload: bytes) -> bytes:
    """One record; ``payload`` must be at most :data:`PAYLOAD_MAX` bytes."""
    return b"%s%s%04x;%s" % (MAGIC, kind, len(payload), payload)


def stderr_records(data: bytes) -> Iterator[bytes]:
    """``data`` written to stderr, as records of at most ``RECORD_MAX`` bytes each."""
    for start in range(0, len(data), PAYLOAD_MAX):
        yield record(STDERR, data[start : start + PAYLOAD_MAX])


def log_records(level: str, body: bytes) -> Iterable[bytes]:
    """What a logging handler wrote (``body``, as written) as records: one, or pieces (``l``)
    ending in an ``L``."""
    head = level.encode("utf-8", "backslashreplace").replace(LEVEL_SEPARATOR, b"")[:64]
    head += LEVEL_SEPARATOR
    room = PAYLOAD_MAX - len(head)
    if len(body) <= room:  # the usual case: one record
        return [record(LOG, head + body)]
    return _log_pieces(head, body, room)


def _log_pieces(head: bytes, body: bytes, room: int) -> Iterator[bytes]:
    """A record too long for one atomic write: ``l`` pieces, then the last one as ``L``."""
    starts = range(0, len(body), room)
    last = starts[-1]
    for start in starts:
        kind = LOG if start == last else LOG_CONTINUED
        yield record(kind, head + body[start : start + room])


def write_records(fd: int, records: Iterable[bytes]) -> None:
    """Each record with one ``write`` (atomic in a pipe); the rest of a short write after it."""
    for data in records:
        while data:
            data = data[os.write(fd, data) :]


def find_magic(buffer: bytes, position: int) -> int:
    """Where the next ``MAGIC`` (or what may be its start, at the very end) is; -1 if nowhere.

    A search for MAGIC's first byte (memchr) and a check, rather than a search for all of it:
    on text output that is many times faster. A run of NULs (binary output) falls back to the
    plain search, so that it is never a Python loop per byte.
    """
    first = MAGIC[:1]
    for _ in range(8):
        at = buffer.find(first, position)
        if at < 0 or buffer.startswith(MAGIC, at) or len(buffer) - at < len(MAGIC):
            return at
        position = at + 1
    return buffer.find(MAGIC, position)


def parse_header(buffer: bytes, at: int) -> tuple[bytes, int] | bool:
    """The record whose ``MAGIC`` starts at ``at``: its kind and payload length.

    False: not a record (its bytes are plain output); True: perhaps one, but incomplete so far.
    """
    header = buffer[at : at + HEADER_SIZE]
    if len(header) < HEADER_SIZE:
        return True
    magic_end = len(MAGIC)
    kind = header[magic_end : magic_end + 1]
    digits = header[magic_end + 1 : magic_end + 5]
    if kind not in KINDS or header[-1:] != b";" or not _HEX_DIGITS.issuperset(digits):
        return False
    length = int(digits, 16)
    if length > PAYLOAD_MAX:
        return False
    if len(buffer) < at + HEADER_SIZE + length:
        return True
    return kind, length


def magic_prefix_at_end(buffer: bytes) -> int:
    """How many bytes at the end of ``buffer`` could begin a ``MAGIC`` that the next read ends."""
    for size in range(len(MAGIC) - 1, 0, -1):
        if buffer.endswith(MAGIC[:size]):
            return size
    return 0
