"""What a job identity leaves in the machine's shared writable places, removed before its uid has
another holder.

A job runs as a uid of the pool; the next job with that uid could read (and change) whatever
the last one left outside its private dirs: owner-only files in ``/tmp``, ``/var/tmp``,
``/dev/shm`` (POSIX shared memory, ``multiprocessing`` and NCCL segments), ``/dev/mqueue``, and
SysV shared memory, semaphores and message queues. :func:`sweep_uids` removes all of them, once
the uid has no process left (the identity pool calls it, on its thread, before the uid goes
out again; the uids that came back meanwhile share one walk).

The walk only goes where the uid itself could have created something: a directory it can
write and search (by the "other" bits or, for the jobs' group, the "group" bits), such as
``/tmp`` and the sticky dirs in it; a directory the uid owns goes whole. A writable directory
below one that is not (made so by its owner) is not searched: a job that wants to leave data for
a later job can do so anyway (a world-readable file); the sweep is for what a job leaves in the
usual places without meaning to. Directories are opened relative to their parent with ``O_NOFOLLOW``, so a link another
job swaps in is never followed, and nothing is followed across a mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: The shared writable places swept, when they exist.
SHARED_PLACES: tuple[Path, ...] = (
    Path("/tmp"),
    Path("/var/tmp"),
    Path("/dev/shm"),
    Path("/dev/mqueue"),
)
#: How long one sweep may walk before it gives up (seconds); the pool then logs what is left.
SWEEP_BUDGET_S = 5.0
#: Where the kernel lists SysV IPC objects, and the column of each object's id.
_SYSVIPC = {"shm": "shmid", "sem": "semid", "msg": "msqid"}
_IPC_RMID = 0
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Sweep:
    """What one :func:`sweep_uids` did: entries and IPC objects removed, and whether it ran out
    of time (then something may be left)."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    out_of_time: bool = False


def sweep_uids(
    uids: Collection[int],
    gid: int | None = None,
    *,
    places: Iterable[Path] = SHARED_PLACES,
    skip: Iterable[Path] = (),
    budget_s: float = SWEEP_BUDGET_S,
    sysvipc: bool = True,
) -> Sweep:
    """Remove what ``uids`` own in ``places`` (walked as described above) and their SysV IPC.

    ``gid``: the jobs' group (a directory searchable by that group is walked too). ``skip``:
    directories never entered (the store, whose job dirs are removed by their own code).
    ``budget_s``: wall-clock bound of the walk. Logs one line when something was removed, a
    warning when something could not be or time ran out. Raises nothing.
    """
    sweep = Sweep()
    deadline = time.monotonic() + budget_s
    skipped = set()
    for path in skip:
        with contextlib.suppress(OSError):
            found = os.stat(path)
            skipped.add((found.st_dev, found.st_ino))
    owners = frozenset(uids)
    walker = _Walker(owners, gid, skipped, deadline, sweep)
    for place in places:
        with contextlib.suppress(OSError):
            fd = os.open(place, _OPEN_DIR)
            try:
                walker.walk(fd, str(place), os.fstat(fd).st_dev)
            except RecursionError:  # nested deeper than Python recurses: said, not raised
                sweep.failed.append(f"{place} (nested too deep)")
            finally:
                os.close(fd)
    if sysvipc:
        _remove_ipc(owners, sweep)
    who = ", ".join(map(str, sorted(owners)))
    if sweep.removed:
        log.info("identities %s: removed what they left: %s", who, ", ".join(sweep.removed[:20]))
    if sweep.failed or sweep.out_of_time:
        log.warning(
            "identities %s: left behind: %s%s",
            who,
            ", ".join(sweep.failed[:20]) or "nothing known",
            f" (the sweep ran out of its {budget_s:g} s)" if sweep.out_of_time else "",
        )
    return sweep


def sweeper(gid: int, skip: Iterable[Path]) -> Callable[[Collection[int]], None]:
    """The identity pool's ``sweep``: :func:`sweep_uids` with the jobs' group and ``skip``."""
    skipped = tuple(skip)

    def sweep(uids: Collection[int]) -> None:
        sweep_uids(uids, gid, skip=skipped)

    return sweep


@dataclass
class _Walker:
    uids: frozenset[int]
    gid: int | None
    skipped: set[tuple[int, int]]
    deadline: float
    sweep: Sweep

    def walk(self, fd: int, where: str, device: int) -> None:
        """Remove the ``uids``' entries in the directory open as ``fd`` and below it."""
        try:
            entries = list(os.scandir(fd))
        except OSError:
            return
        for entry in entries:
            if time.monotonic() > self.deadline:
                self.sweep.out_of_time = True
                return
            path = f"{where}/{entry.name}"
            try:
                found = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if found.st_uid in self.uids:
                self._remove(fd, entry.name, path, stat.S_ISDIR(found.st_mode))
            elif stat.S_ISDIR(found.st_mode) and self._enterable(found, device):
                self._enter(fd, entry.name, path, device)

    def _enterable(self, found: os.stat_result, device: int) -> bool:
        if found.st_dev != device or (found.st_dev, found.st_ino) in self.skipped:
            return False
        wx = stat.S_IWOTH | stat.S_IXOTH
        if found.st_mode & wx == wx:
            return True
        wx = stat.S_IWGRP | stat.S_IXGRP
        return found.st_gid == self.gid and found.st_mode & wx == wx

    def _enter(self, parent: int, name: str, path: str, device: int) -> None:
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent)
        except OSError:
            return  # gone, or swapped for a link: nothing of ours to follow
        try:
            opened = os.fstat(fd)  # what was opened, not what was looked at before
            if opened.st_dev == device and (opened.st_dev, opened.st_ino) not in self.skipped:
                self.walk(fd, path, device)
        finally:
            os.close(fd)

    def _remove(self, parent: int, name: str, path: str, is_dir: bool) -> None:
        try:
            if is_dir:
                shutil.rmtree(name, dir_fd=parent)  # fd-based: never follows a link
            else:
                os.unlink(name, dir_fd=parent)
            self.sweep.removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.sweep.failed.append(f"{path} ({exc.strerror})")
        except RecursionError:
            self.sweep.failed.append(f"{path} (nested too deep)")


def _remove_ipc(uids: frozenset[int], sweep: Sweep) -> None:
    """Remove the SysV shared memory, semaphores and queues that ``uids`` own or created."""
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, id_column in _SYSVIPC.items():
        for ipc_id in _ipc_ids(Path("/proc/sysvipc") / kind, id_column, uids):
            if kind == "shm":
                done = libc.shmctl(ipc_id, _IPC_RMID, None)
            elif kind == "sem":
                done = libc.semctl(ipc_id, 0, _IPC_RMID)
            else:
                done = libc.msgctl(ipc_id, _IPC_RMID, None)
            error = ctypes.get_errno()
            if done == 0:
                sweep.removed.append(f"SysV {kind} {ipc_id}")
            elif error not in (errno.EINVAL, errno.EIDRM):  # already gone
                sweep.failed.append(f"SysV {kind} {ipc_id} ({os.strerror(error)})")


def _ipc_ids(listing: Path, id_column: str, uids: frozenset[int]) -> list[int]:
    """The ids in a ``/proc/sysvipc`` listing whose owner or creator is in ``uids`` (the owner can
    hand an object to any uid with ``IPC_SET``; its creator stays)."""
    try:
        header, *rows = listing.read_text().splitlines()
    except (OSError, ValueError):
        return []
    names = header.split()
    try:
        at_id, at_uid, at_cuid = (names.index(name) for name in (id_column, "uid", "cuid"))
    except ValueError:
        return []
    found = []
    for row in rows:
        cells = row.split()
        with contextlib.suppress(ValueError, IndexError):
            if int(cells[at_uid]) in uids or int(cells[at_cuid]) in uids:
                found.append(int(cells[at_id]))
    return found
