"""The env store on disk: where envs, builds, trash and lock files are, and the moves between them.

Store layout (``settings.envs_dir``)::

    <key>/                      a published env: a uv venv plus sandvisor-env.json
    <key>/sandvisor-env.json    completion marker and metadata; its mtime is "last used"
    .staging/<key>.<pid>.<hex>/ a build in progress (or the debris of a killed one)
    .trash/<key>.<hex>/         an env being deleted
    .locks/<key>.build          exclusive while one process builds <key>
    .locks/<key>.use            shared by every lease of <key>; GC needs it exclusive to delete
    .locks/gc.lock              exclusive while one process collects

Both halves of the store use it: the builder (``build.py``) and the upkeep (``store.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Literal

from sandvisor.supervisor.envs.filelock import FileLock

MARKER = "sandvisor-env.json"

#: ``build``: held by the one builder of a key; ``use``: shared by its leases; ``lock``: gc's.
LockKind = Literal["build", "use", "lock"]


class StoreLayout:
    def __init__(self, root: Path) -> None:
        self.root = root

    def marker(self, key: str) -> Path:
        return self.root / key / MARKER

    def lock(self, key: str, kind: LockKind, *, exclusive: bool = True) -> FileLock:
        """The lock ``kind`` of ``key`` (not yet taken): the one way the store names a lock."""
        locks = self.root / ".locks"
        if not locks.is_dir():
            locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{key}.{kind}", exclusive=exclusive)

    def ensure(self) -> None:
        for sub in (".staging", ".trash", ".locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def new_staging(self, key: str) -> Path:
        return self.root / ".staging" / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"

    def staging_keys(self) -> set[str]:
        return {entry.name.split(".")[0] for entry in (self.root / ".staging").iterdir()}

    def remove_staging_debris(self, key: str) -> None:
        """Only called under ``key``'s build lock, so these belong to dead builds."""
        for entry in (self.root / ".staging").glob(f"{key}.*"):
            shutil.rmtree(entry, ignore_errors=True)

    def discard(self, path: Path, key: str) -> None:
        """Rename ``path`` into the trash: gone for readers at once, deleted later."""
        self.ensure()
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, self.root / ".trash" / f"{key}.{secrets.token_hex(4)}")

    def empty_trash(self) -> None:
        for entry in (self.root / ".trash").iterdir():
            shutil.rmtree(entry, ignore_errors=True)

    def drop_locks(self, key: str, build: FileLock) -> None:
        """Delete ``key``'s lock files; ``build`` is its build lock, held. Skipped while leased."""
        use = self.lock(key, "use")
        if use.try_acquire():
            use.unlink()
            build.unlink()
            use.release()

    def build_lock_keys(self) -> list[str]:
        """Keys with a build lock file, whether or not their env still exists."""
        keys = (path.name.removesuffix(".build") for path in (self.root / ".locks").glob("*.build"))
        return [key for key in keys if is_key(key)]


def disk_usage(root: Path) -> int:
    """Bytes on disk under ``root``, each inode once (uv hardlinks files from its cache)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def is_key(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)
