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
import logging
import os
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sandvisor.supervisor.private_homes import (
    Marks,
    Prepare,
    fresh_private_home,
    home_marks,
    untouched,
)
from sandvisor.supervisor.procfs import ProcInfo, processes_of_uids, signal_process

#: Re-exported: the pool's HOME helpers are used with it.
__all__ = [
    "Identity",
    "IdentityError",
    "IdentityLease",
    "IdentityPool",
    "fresh_private_home",
    "home_marks",
    "lock_dir_for",
    "parse_uids",
    "untouched",
]

#: How often a waiting acquire looks again without a release (a leftover may have died).
RETRY_S = 0.1
#: The lock file in the lock dir: byte N locked means uid N is claimed by a pool.
LOCK_FILE = "uids.lock"
#: ``struct flock`` (type, whence, start, len, pid) as fcntl takes it.
_FLOCK = struct.Struct("@hhqqi4x")

log = logging.getLogger(__name__)

ProcessFinder = Callable[[Iterable[int]], dict[int, list[ProcInfo]]]
Killer = Callable[[ProcInfo], object]
#: Removes what the uids left in the machine's shared places, in one walk (runs on a thread).
Sweep = Callable[[Collection[int]], object]

#: A holder that got its HOME this long after the HOME's marks were taken leaves a mark of
#: anything it changes there: a new entry changes its dir's mtime, a chmod its ctime, and the
#: kernel's file times are coarse by one tick (1-10 ms), far less than this.
MARK_LEEWAY_S = 0.05


class IdentityError(ValueError):
    """A uid range that cannot be used (not numbers, empty pieces, root's uid)."""


@dataclass(frozen=True)
class Identity:
    """The credentials a job runs with: its own uid, and the group all jobs share."""

    uid: int
    gid: int


#: Returned uids swept in one walk of the shared places (see ``IdentityPool._returned``).
SWEEP_BATCH = 8


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

    def __init__(self, pool: IdentityPool, identity: Identity, home: Path | None) -> None:
        self.pool = pool
        self.identity = identity
        #: Its private HOME (TMPDIR and pip site in it), fresh for this holder; None without.
        self.home = home
        self.acquired_at = 0.0  # wall time the pool handed it out

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

    ``lock_dir``: where the lock file lives (None: no lock across processes, for tests of the
    logic). ``homes``: where each uid's private HOME lies (``homes/<uid>``), made fresh
    (:func:`fresh_private_home`, or ``prepare`` when given) before each holder, on a thread of
    the pool's, off the jobs' path; ``stock`` uids are kept ready ahead, so a job does not wait
    for it. None: no private dirs. ``find`` and ``kill``: how processes of uids are found and
    ended (a walk of /proc and a SIGKILL by default; tests inject their own). ``sweep``: removes
    what uids left in the machine's shared places (``shared_sweep.sweep_uids``), on that thread,
    each time a uid comes back with no process, before it goes out again (the uids that came
    back meanwhile share one walk); None: nothing.
    """

    def __init__(
        self,
        uids: Iterable[int],
        gid: int,
        lock_dir: Path | None = None,
        *,
        homes: Path | None = None,
        find: ProcessFinder = processes_of_uids,
        kill: Killer = kill_leftover,
        prepare: Prepare | None = None,
        sweep: Sweep | None = None,
        stock: int = 2,
    ) -> None:
        self.gid = gid
        self._homes = homes
        if prepare is None and homes is not None:
            prepare = fresh_private_home(homes, gid)
        self._prepare = prepare
        self._sweep = sweep
        self._unswept: set[int] = set()  # to sweep: added on the loop, taken on the thread
        self._dirty: dict[int, float] = {}  # returned, not yet swept: uid -> its holder's start
        self._sweep_lock = threading.Lock()
        self._thread: ThreadPoolExecutor | None = None  # one: preparations wait on the disk
        self._stock = stock
        self._preparing: set[asyncio.Future[None]] = set()
        self._waiting = 0  # acquires waiting now: each may have one uid made ready for it
        self._returning: set[int] = set()  # released empty, looked at on the loop's next turn
        self._marks: dict[int, tuple[float, Marks]] = {}  # uid -> when, its HOME's marks
        self._unclaimed: deque[int] = deque(uids)
        self.total = len(self._unclaimed)
        self._lock_dir = lock_dir
        self._find = find
        self._kill = kill
        self._claimed: set[int] = set()
        self._lock_fd = -1  # the lock file, opened on the first claim
        self._empty: deque[int] = deque()  # claimed, free, no process, private dirs fresh
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
        if not self._empty:
            self._provide(self._waiting + 1)
        if not self._empty:
            return None
        uid = self._empty.popleft()
        home = self._homes / str(uid) if self._homes is not None else None
        lease = IdentityLease(self, Identity(uid, self.gid), home)
        lease.acquired_at = time.time()
        self._leased[lease.uid] = lease
        self._provide(self._stock)
        return lease

    def _provide(self, wanted: int) -> None:
        """Claim (and prepare) more uids until ``wanted`` are ready or being made ready."""
        coming = len(self._empty) + len(self._preparing) + len(self._returning)
        while coming < wanted and self._claim():
            self._check()
            coming = len(self._empty) + len(self._preparing) + len(self._returning)
            self._check()
        if coming < wanted and self._dirty:
            self._sweep_dirty()  # no uid left to claim: the returned ones, swept now

    async def start(self) -> None:
        """Have ``stock`` identities ready before the first job asks."""
        self._provide(self._stock)
        await self.settled()

    async def settled(self) -> None:
        """Wait until no preparation is under way."""
        while self._preparing or self._returning:
            await asyncio.sleep(0)  # a return just made is looked at on the loop's next turn
            await asyncio.gather(*list(self._preparing), return_exceptions=True)

    async def acquire(self) -> IdentityLease:
        """Wait until an identity is free and empty, then hold it (cancellable)."""
        self._waiting += 1
        try:
            while (lease := self.try_acquire()) is None:
                self._changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), RETRY_S)
        finally:
            self._waiting -= 1
        return lease

    def release(self, lease: IdentityLease, *, empty: bool = False) -> None:
        """See :meth:`IdentityLease.release`."""
        if self._leased.get(lease.uid) is not lease:
            return
        del self._leased[lease.uid]
        if empty and (self._prepare is not None or self._sweep is not None):
            # After the holder's answer has gone out: the check of its HOME is not the job's.
            self._returning.add(lease.uid)
            asyncio.get_running_loop().call_soon(self._returned, lease.uid, lease.acquired_at)
        elif empty:
            self._empty.append(lease.uid)
        else:
            self._to_check.append(lease.uid)
        self._changed.set()

    def _returned(self, uid: int, acquired_at: float) -> None:
        self._returning.discard(uid)
        if self._sweep is None:
            self._make_ready(uid, acquired_at)
            return
        # Swept later, with others: a walk of the shared places costs milliseconds of this
        # process's time whatever it finds, so returned uids wait for one walk per batch (or
        # until the pool has no other uid to give). None of them goes out before it is swept.
        self._dirty[uid] = acquired_at
        if len(self._dirty) >= SWEEP_BATCH:
            self._sweep_dirty()

    def _sweep_dirty(self) -> None:
        """Make every returned uid waiting for a sweep ready: one walk for all of them."""
        dirty, self._dirty = self._dirty, {}
        for uid, acquired_at in dirty.items():
            self._make_ready(uid, acquired_at)

    def _make_ready(self, uid: int, acquired_at: float | None = None) -> None:
        """``uid`` has no process: swept, fresh private dirs (on a thread), then it may go out."""
        prepare = self._prepare
        if prepare is not None and self._still_fresh(uid, acquired_at):
            prepare = None  # most jobs never write there: a few reads, here
        if prepare is None and self._sweep is None:
            self._empty.append(uid)
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="sandvisor-identities")
        if self._sweep is not None:
            with self._sweep_lock:
                self._unswept.add(uid)
        loop = asyncio.get_running_loop()
        preparing = loop.run_in_executor(self._thread, self._ready, uid, prepare)
        self._preparing.add(preparing)
        preparing.add_done_callback(lambda done: self._prepared(uid, done))

    def _ready(self, uid: int, prepare: Prepare | None) -> None:
        """On the pool's thread: sweep what ``uid`` left (with every uid waiting for a sweep: one
        walk; a uid an earlier call took along is swept already), then ``prepare`` its dirs."""
        with self._sweep_lock:
            uids, self._unswept = self._unswept, set()
        if self._sweep is not None and uids:
            self._sweep(uids)
        if prepare is not None:
            prepare(uid)

    def _still_fresh(self, uid: int, acquired_at: float | None) -> bool:
        """Whether ``uid``'s HOME is as it was made: by its marks, when they were taken long
        enough before its last holder got it (:data:`MARK_LEEWAY_S`), else by a look inside."""
        if self._homes is None:
            return False
        home = self._homes / str(uid)
        mark = self._marks.get(uid)
        if mark is not None and acquired_at is not None and acquired_at - mark[0] > MARK_LEEWAY_S:
            return home_marks(home) == mark[1]
        if not untouched(home, uid):
            return False
        self._mark(uid)
        return True

    def _mark(self, uid: int) -> None:
        assert self._homes is not None
        marks = home_marks(self._homes / str(uid))
        self._marks[uid] = (time.time(), marks)  # the time after the marks: see MARK_LEEWAY_S

    def _prepared(self, uid: int, done: asyncio.Future[None]) -> None:
        self._preparing.discard(done)
        if done.cancelled() or done.exception() is not None:
            log.warning("identity %d: its private dirs could not be made: %s", uid, done)
            self._to_check.append(uid)  # tried again at a later check
        else:
            if self._homes is not None:
                self._mark(uid)
            self._empty.append(uid)
        self._changed.set()

    async def close(self) -> None:
        """Finish the preparations under way and let go of every claimed uid (the lock file):
        the supervisor is done."""
        await self.settled()
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None
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
        for uid in [uid for uid in self._to_check if uid not in found]:
            self._make_ready(uid)
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
