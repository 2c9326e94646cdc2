"""``flock`` file locks usable from asyncio, shared between supervisor processes on one store.

A blocking ``flock`` in a thread cannot be cancelled (the thread would take the lock later and
hold it for nobody), so waiting is a non-blocking attempt repeated with ``asyncio.sleep``.
The kernel drops a lock when its holder dies, SIGKILL included, so a crashed builder never
leaves a store locked. A lock file may be deleted by a holder of the exclusive lock (GC does, for
keys that are gone); whoever locked the deleted file notices and locks the new one instead.
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
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, self._mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if self._still_linked(fd):
                self._fd = fd
                return True
            os.close(fd)  # unlinked by its last holder while we waited: lock the new file

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def unlink(self) -> None:
        """Delete the lock file; only while holding it exclusively, so no one else is inside."""
        assert self._fd is not None and self._mode == fcntl.LOCK_EX
        self.path.unlink(missing_ok=True)

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
