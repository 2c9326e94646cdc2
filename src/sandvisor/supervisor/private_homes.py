"""Each job identity's private HOME (``<private dir>/<uid>``, with ``tmp`` and ``site`` in it):
made fresh between holders, and looked at to know whether a holder changed it.

The identity pool (``supervisor/identities.py``) calls these on its thread, off the jobs' path.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

#: Makes a uid's private dirs fresh for its next holder (runs on a thread).
Prepare = Callable[[int], None]
#: (mtime, ctime, links, mode, uid) of a HOME, its tmp and its site; None if one is missing.
Marks = tuple[tuple[int, ...], ...] | None


def fresh_private_home(root: Path, gid: int) -> Prepare:
    """A ``prepare`` for the pool: ``root/<uid>`` (HOME) with ``tmp`` (TMPDIR) and ``site``
    (PIP_TARGET) in it, all the uid's own and empty; what the last holder left is removed.

    Made between holders rather than per job: on a busy disk each ``mkdir`` costs a job's
    child more than its whole switch of identity (a tenth of a millisecond and more).
    """

    def prepare(uid: int) -> None:
        home = root / str(uid)
        if os.path.lexists(home):
            trash = root / f".{uid}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(home, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for path in (home, home / "tmp", home / "site"):
            os.mkdir(path, 0o700)
            os.chown(path, uid, gid)

    return prepare


def home_marks(home: Path) -> Marks:
    """The marks of ``home``, ``home/tmp`` and ``home/site`` (three ``lstat``)."""
    try:
        found = [os.lstat(path) for path in (home, home / "tmp", home / "site")]
    except OSError:
        return None
    return tuple((s.st_mtime_ns, s.st_ctime_ns, s.st_nlink, s.st_mode, s.st_uid) for s in found)


def untouched(home: Path, uid: int) -> bool:
    """Whether ``home`` is as :func:`fresh_private_home` made it: ``tmp`` and ``site`` alone in
    it, all three empty dirs (not links) of ``uid`` with mode 0700."""
    try:
        if sorted(os.listdir(home)) != ["site", "tmp"]:
            return False
        for path in (home, home / "tmp", home / "site"):
            found = os.lstat(path)
            mode = found.st_mode
            if not stat.S_ISDIR(mode) or stat.S_IMODE(mode) != 0o700 or found.st_uid != uid:
                return False
        return not os.listdir(home / "tmp") and not os.listdir(home / "site")
    except OSError:
        return False
