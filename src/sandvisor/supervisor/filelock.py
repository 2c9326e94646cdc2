"""``flock`` file locks usable from asyncio, shared between supervisor processes on one store.

A blocking ``flock`` in a thread cannot be cancelled (the thread would take the lock later and
hold it for nobody), so waiting is a non-blocking attempt repeated with ``asyncio.sleep``.
The kernel drops a lock when its holder dies, SIGKILL included, so a crashed builder never
leaves a store locked.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

POLL_S = 0.05


class FileLock:
    """One lock file; ``exclusive`` for builders and GC, shared for leases of an env."""

    def __init__(self, path: Path, *, exclusive: bool = True) -> None:
        self.path = path
        self._mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, self._mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self) -> None:
        while not self.try_acquire():
            await asyncio.sleep(POLL_S)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    async def __aenter__(self) -> FileLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
