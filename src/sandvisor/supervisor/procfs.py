"""The process table as ``/proc`` tells it: one scan shared by every job, process identities.

One scan of ``/proc/<pid>/stat`` (see :func:`snapshot`) gives each process's parent, group,
session, state, CPU time, start time and RSS. One scan of ``/proc`` rather than psutil's
per-process objects: every job's watchdog reads the same table ten times a second, and parsing
one small file per process is all it needs. A process is known by ``(pid, start time)``, so a
reused pid is never taken for another process, and :func:`signal_process` signals through a pidfd
opened and checked against that identity, so it cannot hit a stranger that got the pid between.

Which of these processes are a job's is ``supervisor/proctree.py``'s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = "/proc"


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One line of ``/proc/<pid>/stat``, the fields we use."""

    pid: int
    comm: str
    ppid: int
    pgrp: int
    session: int
    state: str
    start_ticks: int
    cpu_ticks: int
    rss_pages: int
    #: Its threads (``num_threads``): each is a task the kernel counts, as a process is.
    threads: int = 1

    @property
    def key(self) -> tuple[int, int]:
        """The process's identity: a pid reused by another process has another start time."""
        return (self.pid, self.start_ticks)

    @property
    def zombie(self) -> bool:
        """Dead (or dying) and not yet reaped: it holds no memory and runs nothing."""
        return self.state in "ZX"

    @property
    def rss_bytes(self) -> int:
        """Resident set size in bytes, shared pages counted in full."""
        return self.rss_pages * _PAGE_SIZE

    @property
    def cpu_s(self) -> float:
        """User and system CPU time in seconds (its own, not its reaped children's)."""
        return self.cpu_ticks / _CLOCK_TICKS


def children_of(pid: int) -> list[int] | None:
    """The pids of ``pid``'s children (``/proc/<pid>/task/<pid>/children``); None where the
    kernel cannot say (no CONFIG_PROC_CHILDREN) or ``pid`` is gone."""
    try:  # raw reads: this runs once per job, and a text file object costs more than it
        fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = b"".join(iter(lambda: os.read(fd, 65536), b""))
    except OSError:
        return None
    finally:
        os.close(fd)
    return [int(child) for child in data.split()]


def read_proc(pid: int) -> ProcInfo | None:
    """Process ``pid``'s ``/proc/<pid>/stat``; None when it is gone (or never was)."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:  # gone, or never there
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    close = data.rfind(b")")
    fields = data[close + 2 :].split()
    return ProcInfo(
        pid=pid,
        comm=data[data.find(b"(") + 1 : close].decode(errors="replace"),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        state=fields[0].decode(),
        start_ticks=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        rss_pages=int(fields[21]),
        threads=int(fields[17]),
    )


def proportional_bytes(pids: Iterable[int]) -> int | None:
    """The processes' proportional set size (PSS) summed: each page shared by N processes counts
    1/N. None when the kernel does not say (no ``smaps_rollup``) for any of them.

    Costs a walk of each process's page tables, so it confirms a memory breach that RSS suggests
    rather than being sampled: RSS counts in full, in every job, the pages a forked job shares
    with its template (everything a preload imported).
    """
    total: int | None = None
    for pid in pids:
        try:
            with open(f"{_PROC}/{pid}/smaps_rollup", "rb") as handle:
                text = handle.read()
        except OSError:
            continue  # gone, or no smaps_rollup (Linux < 4.14)
        for line in text.splitlines():
            if line.startswith(b"Pss:"):
                total = (total or 0) + int(line.split()[1]) * 1024
                break
    return total


def scan() -> dict[int, ProcInfo]:
    """Every process in ``/proc`` now, by pid (a fresh read; see :func:`snapshot`)."""
    table: dict[int, ProcInfo] = {}
    for name in os.listdir(_PROC):
        if name.isdigit() and (info := read_proc(int(name))) is not None:
            table[info.pid] = info
    return table


_cached: tuple[float, dict[int, ProcInfo]] = (float("-inf"), {})


def snapshot(max_age_s: float = 0.0) -> dict[int, ProcInfo]:
    """The process table, rescanned only when the last scan is older than ``max_age_s``.

    Every job's watchdog samples at the same rate, so one scan per interval serves them all.
    """
    global _cached
    taken, table = _cached
    now = time.monotonic()
    if now - taken > max_age_s:
        table = scan()
        _cached = (now, table)
    return table


_children_cache: tuple[dict[int, ProcInfo], dict[int, list[ProcInfo]]] | None = None


def children_by_parent(table: dict[int, ProcInfo]) -> dict[int, list[ProcInfo]]:
    """Parent pid -> children, built once per table: every job's tree reads the same one."""
    global _children_cache
    if _children_cache is not None and _children_cache[0] is table:
        return _children_cache[1]
    children: dict[int, list[ProcInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    _children_cache = (table, children)
    return children


def carries_job_id(pid: int, marker: bytes) -> bool:
    """Whether ``/proc/<pid>/environ`` holds the entry ``marker`` (False if it cannot be read)."""
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def signal_process(pid: int, start_ticks: int, sig: int) -> bool:
    """Send ``sig`` to exactly the process ``(pid, start_ticks)``; False when it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd support: a plain kill after the identity check
        info = read_proc(pid)
        if info is None or info.start_ticks != start_ticks:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True
    try:
        # The pidfd pins the process it was opened on; check that it is still ours.
        info = read_proc(pid)
        if info is None or info.start_ticks != start_ticks:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def reap_orphans(candidates: Iterable[int]) -> list[int]:
    """Reap those of ``candidates`` that are zombie children of ours; the pids reaped.

    Only processes a job's tree claimed are passed here, never the job's root (the core waits
    for it with its own ``os.wait4``): ``waitpid(-1)`` would steal children that asyncio,
    multiprocessing or the core are waiting for.
    """
    me = os.getpid()
    reaped = []
    for candidate in candidates:
        info = read_proc(candidate)
        if info is None or info.ppid != me or not info.zombie:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(info.pid, os.WNOHANG)[0] == info.pid:
                reaped.append(info.pid)
    return reaped


def process_uid(pid: int) -> int | None:
    """The real uid of process ``pid`` (``/proc/<pid>/status``); None when it is gone."""
    try:
        with open(f"{_PROC}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def processes_of_uids(uids: Iterable[int]) -> dict[int, list[ProcInfo]]:
    """The live processes (zombies excluded) whose real uid is one of ``uids``, by uid.

    A full walk of ``/proc`` with a read of each ``status``: the identity pool asks only when it
    must know that an identity has no process left (see ``supervisor/identities.py``).
    """
    wanted = set(uids)
    found: dict[int, list[ProcInfo]] = {}
    for info in scan().values():
        if info.zombie:
            continue
        uid = process_uid(info.pid)
        if uid in wanted:
            found.setdefault(uid, []).append(info)
    return found
