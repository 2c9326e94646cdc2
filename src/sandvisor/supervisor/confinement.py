"""Env interpreters a root supervisor starts run in a user namespace, as an unprivileged uid.

An env's template imports the env's packages (their ``.pth`` files at start, learned preloads
after), and a spawned job's host starts the env's interpreter: code from a package a request
named runs there, before any job's uid switch. As root it could read the worker's secrets
(``/proc/<supervisor>/environ``), signal the supervisor, or write into the runtime and the env
store. So, when jobs switch identities, those interpreters start *confined*:

    launcher (this runtime's own interpreter, ``-I -S``: nothing of the env's runs in it)
      unshare(CLONE_NEWUSER) -> "U" to the supervisor -> waits for "G"
    supervisor
      writes the namespace's maps: its root is the host uid and gid ``SANDVISOR_TEMPLATE_UID``
      (19999); every job uid and the jobs' gid map to themselves; host root is not mapped
    launcher
      setresgid/setresuid(0): the namespace's root, host uid 19999 -> exec the env interpreter

Inside, the template still forks its jobs and switches each to its own job uid (it holds every
capability, but only within its namespace, over the uids mapped there); outside, it is uid 19999:
it reads what any user may, owns the jobs' dir (it makes each job's dir) and nothing else, and
cannot read or signal a root process. What a job sees differently: files owned by a uid not
mapped (root's) show as owned by the overflow uid (65534, ``nobody``).

Where user namespaces cannot be made (a container whose seccomp profile refuses ``unshare``),
:func:`probe` says why: the supervisor then starts env interpreters as root, and says so once.
Facts from user_namespaces(7) and unshare(2): writing a map of more than one line needs
CAP_SETUID (CAP_SETGID) in the parent namespace, so the supervisor writes it; a process's
credentials in the new namespace only take effect once it sets them after the maps exist.
"""

from __future__ import annotations

import functools
import os
import select
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from sandvisor.supervisor.privilege import Privilege
from sandvisor.supervisor.settings import Settings

#: CLONE_NEWUSER from <sched.h>.
CLONE_NEWUSER = 0x10000000
#: How long a launcher may take to unshare and say so, in seconds.
HANDSHAKE_TIMEOUT_S = 10.0

#: The launcher's code: argv is [ready_w, go_r, program, *args]. Stdlib only, no site.
LAUNCHER = """
import ctypes, os, sys
ready_w, go_r = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWUSER) != 0:
    os.write(ready_w, b"E" + os.strerror(ctypes.get_errno()).encode())
    os._exit(71)
os.write(ready_w, b"U")
if os.read(go_r, 1) != b"G":
    os._exit(71)
os.close(ready_w)
os.close(go_r)
os.setgroups([])
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
os.execv(sys.argv[3], sys.argv[3:])
""".replace("CLONE_NEWUSER", hex(CLONE_NEWUSER))


class ConfinementError(OSError):
    """A confined interpreter could not be started (the reason in the message)."""


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids as ``(first, count)`` runs of consecutive ids."""
    runs: list[tuple[int, int]] = []
    for value in sorted(set(ids)):
        if runs and runs[-1][0] + runs[-1][1] == value:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    return runs


@dataclass(frozen=True)
class Confinement:
    """The identity confined interpreters take (``uid``, ``gid``: host ids of the namespace's
    root) and the job identities mapped into their namespace to themselves."""

    uid: int
    gid: int
    job_uids: tuple[int, ...]
    job_gid: int

    def uid_map(self) -> str:
        """The namespace's uid_map: its root is :attr:`uid`, each job uid is itself."""
        lines = [f"0 {self.uid} 1"] + [f"{first} {first} {n}" for first, n in _runs(self.job_uids)]
        return "\n".join(lines) + "\n"

    def gid_map(self) -> str:
        """The namespace's gid_map: its root group is :attr:`gid`, the jobs' gid is itself."""
        return f"0 {self.gid} 1\n{self.job_gid} {self.job_gid} 1\n"

    def popen(self, argv: Sequence[str], pass_fds: Sequence[int] = (), **kwargs: object) -> int:
        """Start ``argv`` confined (``subprocess.Popen``'s other arguments as given); its pid,
        which is the program's own once the launcher has exec'd it. Returns once the maps are
        written. Raises ConfinementError (or OSError) when it cannot be started confined: the
        launcher is then killed and reaped."""
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCHER, str(ready_w), str(go_r), *argv],
                pass_fds=(*pass_fds, ready_w, go_r),
                **kwargs,  # type: ignore[call-overload]
            )
            process.returncode = 0  # reaped by its owner (wait4), never by Popen
            os.close(ready_w)
            os.close(go_r)
            ready_w = go_r = -1
            try:
                self._settle(process.pid, ready_r, go_w)
            except OSError:
                _kill_and_reap(process.pid)
                raise
            return process.pid
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                if fd >= 0:
                    os.close(fd)

    def _settle(self, pid: int, ready_r: int, go_w: int) -> None:
        readable, _, _ = select.select([ready_r], [], [], HANDSHAKE_TIMEOUT_S)
        said = os.read(ready_r, 256) if readable else b""
        if said != b"U":
            why = said[1:].decode(errors="replace") if said.startswith(b"E") else "no answer"
            raise ConfinementError(f"cannot make a user namespace: {why}")
        with open(f"/proc/{pid}/uid_map", "w") as uid_map:
            uid_map.write(self.uid_map())
        with open(f"/proc/{pid}/gid_map", "w") as gid_map:
            gid_map.write(self.gid_map())
        os.write(go_w, b"G")

    def probe(self) -> str | None:
        """None when an interpreter starts confined here and is the namespace's root as
        :attr:`uid` outside; else why not, in one line."""
        check = "import os; print(os.getresuid()[0])"
        reader, writer = os.pipe()
        try:
            pid = self.popen(
                [sys.executable, "-I", "-S", "-c", check],
                stdin=subprocess.DEVNULL,
                stdout=writer,
                stderr=subprocess.DEVNULL,
                env={},
                cwd="/",
            )
        except OSError as exc:
            return str(exc)
        finally:
            os.close(writer)
        with os.fdopen(reader) as output:
            seen = output.read().strip()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or seen != "0":
            return f"a confined interpreter did not run as its namespace's root (it said {seen!r})"
        return None


@functools.lru_cache(maxsize=4)
def _probed(confinement: Confinement) -> str | None:
    """:meth:`Confinement.probe` once per process and confinement: whether the kernel lets a
    user namespace be made does not change while a worker runs (a supervisor starts once; tests
    and ``doctor`` start many)."""
    return confinement.probe()


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def decide_confinement(settings: Settings, privilege: Privilege) -> tuple[Confinement | None, str]:
    """How env interpreters start, and the line that says so: confined as
    ``settings.template_uid`` when jobs switch identities, ``SANDVISOR_CONFINE_ENVS`` is on and
    a confined interpreter starts here (:meth:`Confinement.probe`, one short interpreter);
    otherwise None, with why."""
    if not privilege.switching:
        return None, "env interpreters run as the supervisor (jobs do too)"
    if not settings.confine_envs:
        return None, "SANDVISOR_CONFINE_ENVS is off: env interpreters run as root"
    uid = settings.template_uid
    if uid in privilege.uids or uid == 0:
        return (
            None,
            f"SANDVISOR_TEMPLATE_UID {uid} is root or a job uid: env interpreters run as root",
        )
    confinement = Confinement(uid, uid, privilege.uids, privilege.gid)
    problem = _probed(confinement)
    if problem is not None:
        return None, f"env interpreters run as root: {problem}"
    return confinement, f"env interpreters run in a user namespace as uid {uid}"
