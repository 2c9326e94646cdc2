"""Removing job working dirs on one background thread, so the event loop never waits on a disk.

An ``rmdir`` on a busy ext4 volume can take milliseconds (it waits on the journal); done in the
loop it would stall every job's I/O, and a thread per removal costs a hand-off and a wake-up of
the loop for each. One daemon thread takes paths from a queue and removes them; ``close`` lets
it finish what is queued.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import threading
from pathlib import Path

_STOP = None


class DirRemover:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path | str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def remove(self, path: Path | str) -> None:
        """Remove ``path`` and everything in it, soon; a path that is not there is fine."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sandvisor-rmdir", daemon=True)
            self._thread.start()
        self._queue.put(path)

    def _run(self) -> None:
        while (path := self._queue.get()) is not _STOP:
            shutil.rmtree(path, ignore_errors=True)

    async def close(self) -> None:
        """Wait until every queued path is gone; the thread ends."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
