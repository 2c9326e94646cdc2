"""Job identities: the pool of unprivileged uids that jobs and actors run as, one per holder.

    acquire: a uid this pool holds and knows empty
             -> else a walk of /proc over the returned uids it must check
             -> else claim one more uid of the range (a byte lock in a file: no other supervisor
                on the machine hands it out while this one holds it) and check it the same way
             -> else wait for a release
    release: the holder has killed what it found of its processes; the uid comes back known
             empty when the holder saw its last process go, else to be checked
    check:   one walk of /proc; a process of a checked uid is a leftover (nobody holds the
             uid): it is killed, and the uid stays out until a later walk finds none

So a uid goes to its next holder only when no process of it is left: a leftover the job's
process tree missed is still found by its uid (the one mark a job cannot take off), and can
never share a uid, and so signals and files, with the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sandvisor.supervisor.procfs import ProcInfo, processes_of_uids, signal_process

#: How often a waiting acquire looks again without a release (a leftover may have died).
RETRY_S = 0.1
#: The lock file in the lock dir: byte N locked means uid N is claimed by a pool.
LOCK_FILE = "uids.lock"
#: ``struct flock`` (type, whence, start, len, pid) as fcntl takes it.
_FLOCK = struct.Struct("@hhqqi4x")

ProcessFinder = Callable[[Iterable[int]], dict[int, list[ProcInfo]]]
Killer = Callable[[ProcInfo], object]


class IdentityError(ValueError):
    """A uid range that cannot be used (not numbers, empty pieces, root's uid)."""


@dataclass(frozen=True)
class Identity:
    """The credentials a job runs with: its own uid, and the group all jobs share."""

    uid: int
    gid: int


def parse_uids(text: str) -> tuple[int, ...]:
    """``"20000-20063"``, ``"20000-20003,20010"`` -> the uids in order; ``""`` -> none.

    Raises :class:`IdentityError` for anything else, and for uid 0 (a job as root is no job
    identity at all).
    """
    uids: list[int] = []
    for piece in (part.strip() for part in text.split(",")):
        if not piece:
            continue
        low, _, high = piece.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise IdentityError(f"{piece!r} is not a uid or a range 'FIRST-LAST'") from None
        if first <= 0 or last < first:
            raise IdentityError(f"{piece!r}: uids must be above 0, first <= last")
        uids.extend(uid for uid in range(first, last + 1) if uid not in uids)
    return tuple(uids)


def kill_leftover(info: ProcInfo) -> bool:
    """SIGKILL exactly that process (pid and start time); False when it is already gone."""
    return signal_process(info.pid, info.start_ticks, signal.SIGKILL)


class IdentityLease:
    """One holder's identity, from acquire to :meth:`release`."""

    def __init__(self, pool: IdentityPool, identity: Identity) -> None:
        self.pool = pool
        self.identity = identity

    @property
    def uid(self) -> int:
        return self.identity.uid

    @property
    def gid(self) -> int:
        return self.identity.gid

    def release(self, *, empty: bool = False) -> None:
        """Give the identity back, once its holder's processes are killed. ``empty``: the holder
        saw its last process go, so no check is needed. A second release is a no-op."""
        self.pool.release(self, empty=empty)


class IdentityPool:
    """Hands out the uids of ``uids``, all with group ``gid``; one holder per uid at a time.

    ``lock_dir``: where the per-uid lock files live (None: no lock across processes, for tests
    of the logic). ``find`` and ``kill``: how processes of uids are found and ended (a walk of
    /proc and a SIGKILL by default; tests inject their own).
    """

    def __init__(
        self,
        uids: Iterable[int],
        gid: int,
        lock_dir: Path | None = None,
        *,
        find: ProcessFinder = processes_of_uids,
        kill: Killer = kill_leftover,
    ) -> None:
        self.gid = gid
        self._unclaimed: deque[int] = deque(uids)
        self.total = len(self._unclaimed)
        self._lock_dir = lock_dir
        self._find = find
        self._kill = kill
        self._claimed: set[int] = set()
        self._lock_fd = -1  # the lock file, opened on the first claim
        self._empty: deque[int] = deque()  # claimed, free, and known to have no process
        self._to_check: list[int] = []  # claimed, free, maybe not empty
        self._leased: dict[int, IdentityLease] = {}
        self._changed = asyncio.Event()
        self.walks = 0  # walks of /proc made: tests and benchmarks read it

    @property
    def held(self) -> set[int]:
        """The uids leased now."""
        return set(self._leased)

    def try_acquire(self) -> IdentityLease | None:
        """An identity with no process left, now; None when every one is held or not yet empty."""
        if not self._empty and self._to_check:
            self._check()
        while not self._empty and self._claim():
            self._check()
        if not self._empty:
            return None
        lease = IdentityLease(self, Identity(self._empty.popleft(), self.gid))
        self._leased[lease.uid] = lease
        return lease

    async def acquire(self) -> IdentityLease:
        """Wait until an identity is free and empty, then hold it (cancellable)."""
        while (lease := self.try_acquire()) is None:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), RETRY_S)
        return lease

    def release(self, lease: IdentityLease, *, empty: bool = False) -> None:
        """See :meth:`IdentityLease.release`."""
        if self._leased.get(lease.uid) is not lease:
            return
        del self._leased[lease.uid]
        (self._empty if empty else self._to_check).append(lease.uid)
        self._changed.set()

    def close(self) -> None:
        """Let go of every claimed uid (their lock files): the supervisor is done."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # its locks go with it
            self._lock_fd = -1
        self._claimed.clear()

    def _claim(self) -> bool:
        """Take one more uid of the range that no other process holds; False when none is left."""
        for _ in range(len(self._unclaimed)):
            uid = self._unclaimed.popleft()
            if self._lock(uid):
                self._to_check.append(uid)
                return True
            self._unclaimed.append(uid)  # another supervisor's now; perhaps free later
        return False

    def _lock(self, uid: int) -> bool:
        """Lock byte ``uid`` of the machine's lock file: an open-file-description lock, so one
        descriptor holds every claimed uid and two pools conflict even in one process."""
        if self._lock_dir is not None:
            if self._lock_fd < 0:
                path = self._lock_dir / LOCK_FILE
                self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, uid, 1, 0)
            try:
                fcntl.fcntl(self._lock_fd, fcntl.F_OFD_SETLK, request)
            except (BlockingIOError, PermissionError):
                return False  # another pool's
        self._claimed.add(uid)
        return True

    def _check(self) -> None:
        """One walk of /proc: uids to check with no process are empty; leftovers are killed."""
        self.walks += 1
        found = self._find(self._to_check)
        for info in (info for infos in found.values() for info in infos):
            self._kill(info)
        self._empty.extend(uid for uid in self._to_check if uid not in found)
        self._to_check = [uid for uid in self._to_check if uid in found]


def lock_dir_for(home: Path) -> Path:
    """Where the pool's lock files go: ``/run/sandvisor/identities``, one place per machine, so
    two supervisors (a worker and ``sandvisor doctor``) never hand out one uid; under ``home``
    where /run cannot be written (then only supervisors of one store exclude each other)."""
    for place in (Path("/run/sandvisor/identities"), home / "identities"):
        with contextlib.suppress(OSError):
            place.mkdir(mode=0o700, parents=True, exist_ok=True)
            if place.stat().st_uid == os.geteuid():
                return place
    return home / "identities"
