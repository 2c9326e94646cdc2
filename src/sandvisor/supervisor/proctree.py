"""Every process a job started: found, measured, and ended, even those that tried to get away.

One scan of the process table (shared by all jobs, ``procfs.snapshot``) gives each process's
parent, group, session, state, CPU time, start time and RSS. A job's members are found by four
marks, cheapest first:

- descent: parent links from the job's root process;
- session and group: the child starts its own session, so ``sid == pgid == root pid``; its
  descendants keep both unless they call ``setsid``/``setpgid`` themselves;
- memory: a process seen once stays a member until it is gone;
- the job's marks, for a process that detached (``setsid`` and a double fork) between two scans
  and was reparented to an adopter (the supervisor and the templates are child subreapers): its
  name (the child names itself :func:`job_comm`, which forks inherit), after an exec the
  ``SANDVISOR_JOB_ID=<id>`` entry of its ``/proc/<pid>/environ``; for a job that runs as an
  identity, its uid alone (which it cannot change, while any process can take any name or
  environment: another job could otherwise wear this one's marks).

A process is known by ``(pid, start time)``, so a reused pid is never taken for a member, and
signals go through a pidfd checked against that identity (``procfs.signal_process``), so they
cannot hit a stranger that got the pid in between. Reading ``/proc`` is ``procfs.py``'s job;
claiming a job's processes and ending them is this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sandvisor.prctl import is_subreaper
from sandvisor.protocol.messages import JOB_COMM_DIGITS, JOB_COMM_PREFIX, JOB_ENV_VAR
from sandvisor.supervisor.procfs import (
    ProcInfo,
    carries_job_id,
    children_by_parent,
    process_uid,
    reap_orphans,
    scan,
    signal_process,
)

#: Re-exported: callers take the job variable with the tree that looks for it.
__all__ = [
    "JOB_ENV_VAR",
    "ProcessTree",
    "Termination",
    "TreeSample",
    "job_comm",
    "job_environ",
    "terminate_tree",
]
# How often terminate_tree looks again while waiting for processes to go.
_POLL_S = 0.02
# How long SIGKILL waves go on before survivors are reported (a process in
# uninterruptible sleep cannot die until its I/O returns).
_KILL_TIMEOUT_S = 10.0


def job_comm(job_id: str) -> str:
    """The process name a job's child takes, so that its forked descendants can be found.

    A digest of the id, not the id cut to the kernel's 15 bytes: two ids that share their first
    12 characters (RunPod's ``sync-...`` ids do) would otherwise name each other's processes,
    and a job would claim, and kill, another job's detached ones. 48 bits of digest make that a
    non-event among the jobs of one machine; the prefix keeps the name apart from a spare's.
    """
    digest = hashlib.blake2b(job_id.encode(), digest_size=JOB_COMM_DIGITS // 2).hexdigest()
    return JOB_COMM_PREFIX + digest


def job_environ(job_id: str) -> dict[str, str]:
    """The variable that marks a job's processes; the core adds it to the child's environment."""
    return {JOB_ENV_VAR: job_id}


@dataclass(frozen=True)
class TreeSample:
    """A job's process tree at one moment: live processes only, zombies excluded."""

    rss_bytes: int
    procs: int
    cpu_s: float
    pids: tuple[int, ...]
    #: Threads of those processes (a process has one at least): what max_procs bounds too.
    tasks: int = 0


@dataclass
class ProcessTree:
    """The processes of one job, kept up to date by :meth:`refresh`."""

    job_id: str
    root_pid: int
    #: Besides us, the processes that adopt the job's orphans (the template that forked it).
    adopters: tuple[int, ...] = ()
    #: The root is a spawned job's host (sandbox_child/host.py), not the job: it is found and
    #: stopped with the job, but its memory, CPU and count are not the job's.
    hosted: bool = False
    #: The job's own uid when it runs as an identity: an orphan of that uid is the job's,
    #: whatever it renamed itself to or whatever environment it took, and only those are.
    uid: int | None = None
    members: dict[int, ProcInfo] = field(default_factory=dict)
    seen: int = 0
    _known: dict[int, int] = field(default_factory=dict)  # pid -> start ticks
    _root_start: int | None = None
    _session_leader: bool = False
    _strangers: set[tuple[int, int]] = field(default_factory=set)

    def refresh(self, table: dict[int, ProcInfo] | None = None) -> dict[int, ProcInfo]:
        """Find the job's processes in ``table`` (a fresh scan by default); zombies included."""
        table = scan() if table is None else table
        self._note_root(table)
        found = {
            pid: info
            for pid, info in table.items()
            if self._known.get(pid) == info.start_ticks or self._in_session(info)
        }
        root = table.get(self.root_pid)
        if root is not None and root.start_ticks == self._root_start:
            found[root.pid] = root
        self._descend(found, table)
        if self._claim_orphans(found, table):
            self._descend(found, table)
        self.seen += sum(1 for pid in found if pid not in self._known)
        self._known = {pid: info.start_ticks for pid, info in found.items()}
        self.members = found
        return found

    def sample(self, table: dict[int, ProcInfo] | None = None) -> TreeSample:
        live = [info for info in self.refresh(table).values() if not info.zombie]
        if self.hosted:
            live = [info for info in live if info.pid != self.root_pid]
        return TreeSample(
            rss_bytes=sum(info.rss_bytes for info in live),
            procs=len(live),
            cpu_s=sum(info.cpu_s for info in live),
            pids=tuple(sorted(info.pid for info in live)),
            tasks=sum(info.threads for info in live),
        )

    def live(self, table: dict[int, ProcInfo] | None = None) -> list[ProcInfo]:
        return [info for info in self.refresh(table).values() if not info.zombie]

    def signal_all(self, sig: int, members: Iterable[ProcInfo]) -> int:
        """Signal the job's process group and each member; the number of members signalled."""
        members = list(members)
        if self._session_leader and any(info.pgrp == self.root_pid for info in members):
            # The group reaches members born since the last scan. It is only signalled while
            # a member is in it: a group id cannot be reused while the group has members.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.root_pid, sig)
        return sum(signal_process(info.pid, info.start_ticks, sig) for info in members)

    def reap(self) -> list[int]:
        """Reap the job's orphaned zombies; never the root, which the core waits for itself.

        Reaping one zombie can hand us its own dead children, so this rescans until a round
        reaps nothing.
        """
        reaped: list[int] = []
        while True:
            round_ = reap_orphans(pid for pid in self.members if pid != self.root_pid)
            if not round_:
                return reaped
            reaped += round_
            self.refresh()

    def _note_root(self, table: dict[int, ProcInfo]) -> None:
        root = table.get(self.root_pid)
        if self._root_start is None and root is not None:
            self._root_start = root.start_ticks
        if root is not None and root.start_ticks == self._root_start:
            self._session_leader = root.session == root.pid == root.pgrp

    def _in_session(self, info: ProcInfo) -> bool:
        # Only a root that leads its own session makes the session a mark of the job: otherwise
        # the session would be the supervisor's own.
        return self._session_leader and (
            info.session == self.root_pid or info.pgrp == self.root_pid
        )

    def _descend(self, found: dict[int, ProcInfo], table: dict[int, ProcInfo]) -> None:
        children = children_by_parent(table)
        pending = list(found)
        while pending:
            for child in children.get(pending.pop(), ()):
                if child.pid not in found:
                    found[child.pid] = child
                    pending.append(child.pid)

    def _claim_orphans(self, found: dict[int, ProcInfo], table: dict[int, ProcInfo]) -> bool:
        """Claim orphans (children of an adopter) that carry this job's name or variable."""
        adopters = {os.getpid(), *self.adopters}
        if not is_subreaper():
            adopters.add(1)
        comm = job_comm(self.job_id)
        marker = f"{JOB_ENV_VAR}={self.job_id}".encode()
        claimed = False
        children = children_by_parent(table)
        for info in [child for adopter in adopters for child in children.get(adopter, ())]:
            if info.pid in found or info.key in self._strangers:
                continue
            if self._marked(info, comm, marker):
                found[info.pid] = info
                claimed = True
            else:
                self._strangers.add(info.key)
        return claimed

    def _marked(self, info: ProcInfo, comm: str, marker: bytes) -> bool:
        """Whether orphan ``info`` bears this job's mark; reads its ``/proc`` entry, raises nothing.

        With an identity the uid is the mark: any process may take any name (``PR_SET_NAME``
        needs no privilege, and every comm is world-readable) or any environment, so a name or
        a variable would let one job claim, count against its own limits, and kill another's
        processes; only the kernel sets the uid. Without identities every job runs as one uid
        and the name or variable is all there is: forgeable between jobs (README says so).
        """
        if self.uid is not None:
            return process_uid(info.pid) == self.uid
        return info.comm == comm or carries_job_id(info.pid, marker)


@dataclass(frozen=True)
class Termination:
    """What :func:`terminate_tree` did: counts, and pids still alive when it gave up."""

    terminated: int
    killed: int
    survivors: tuple[int, ...]
    seconds: float


async def terminate_tree(
    tree: ProcessTree, grace_s: float, *, kill_timeout_s: float = _KILL_TIMEOUT_S
) -> Termination:
    """SIGTERM the whole tree, wait up to ``grace_s``, then SIGKILL until nothing is left.

    Zombies count as gone: their parent (or we, for orphans, see :func:`reap_orphans`) reaps
    them. A process that forks while being killed is found by the next scan and killed too.
    """
    started = time.monotonic()
    live = tree.live()
    terminated = tree.signal_all(signal.SIGTERM, live)
    # A stopped process keeps SIGTERM pending until it runs again.
    tree.signal_all(signal.SIGCONT, live)
    live = await _wait_gone(tree, started + grace_s)
    killed = 0
    deadline = time.monotonic() + kill_timeout_s
    while live and time.monotonic() < deadline:
        killed += tree.signal_all(signal.SIGKILL, live)
        live = await _wait_gone(tree, time.monotonic() + _POLL_S * 5)
    tree.reap()
    return Termination(
        terminated=terminated,
        killed=killed,
        survivors=tuple(sorted(info.pid for info in live)),
        seconds=time.monotonic() - started,
    )


async def _wait_gone(tree: ProcessTree, deadline: float) -> list[ProcInfo]:
    live = tree.live()
    while live and time.monotonic() < deadline:
        tree.reap()
        await asyncio.sleep(_POLL_S)
        live = tree.live()
    return live
