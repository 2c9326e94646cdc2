"""The job's identity: the child stops being root between its job frame and the job's first line.

The supervisor (when it runs as root) names an unprivileged uid and the jobs' group in the job
frame's ``identity``; the job's working dir is made its own while the child is still root, then
the child drops every privilege it has, in the one order that leaves none behind:

    workdir (root: create, chown) -> supplementary groups dropped -> gid -> uid
    -> no_new_privs (setuid binaries grant nothing) -> dumpable again (/proc/self is the job's)
    -> umask 002 (the shared caches stay writable for the other identities)

Its private HOME, TMPDIR and pip site were made fresh for its uid before the job was given it
(``supervisor/identities.py``), so a few syscalls are all the switch adds: a template's fork
speed is kept. A child that cannot switch never runs the
job (:class:`IdentityError`): a job runs as its identity or not at all.
"""

from __future__ import annotations

import os
from typing import Any

from sandvisor.prctl import forbid_new_privileges, make_dumpable
from sandvisor.sandbox_child.workspace import make_workdir

#: The jobs' umask: files a job makes in the shared caches are writable by the jobs' group.
JOB_UMASK = 0o002

#: This process (a spare) has no supplementary groups and no_new_privs already.
_dropped_ahead = False


class IdentityError(Exception):
    """The child could not become the job's identity; the job must not run."""


def take_identity(job: dict[str, Any]) -> None:
    """Become ``job["identity"]`` (uid and gid; home, tmp, site are already its own) if the
    frame names one.

    Raises :class:`IdentityError` when any step fails: the caller reports it and never runs the
    job as root. Without an identity (a supervisor that is not root) nothing changes.
    """
    identity = job.get("identity")
    if not identity:
        return
    uid, gid = int(identity["uid"]), int(identity["gid"])
    try:
        _own_dir(job["workdir"], uid, gid)
        if not _dropped_ahead:
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise IdentityError(f"cannot become uid {uid} gid {gid}: {exc}") from None
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise IdentityError(f"uid {uid} was not taken whole: {os.getresuid()}")
    if not _dropped_ahead and not forbid_new_privileges():
        raise IdentityError("the kernel refused PR_SET_NO_NEW_PRIVS")
    make_dumpable()
    os.umask(JOB_UMASK)


def drop_ahead() -> None:
    """What a spare drops before it knows its job, when it is root: supplementary groups, and
    new privileges on exec. Neither stops the switch to come, neither matters to a job that
    stays root (a supervisor whose pool is off), and each costs a job a first call after the
    fork (tens of microseconds of page copies) that the spare now pays instead."""
    global _dropped_ahead
    if os.geteuid() != 0:
        return
    try:
        os.setgroups([])
    except OSError:
        return  # no CAP_SETGID after all: take_identity tries, and says so, for a job
    make_dumpable()  # already set: the call warms the path the job's own call takes
    _dropped_ahead = forbid_new_privileges()
    # The rest of the switch, called once with no effect (-1: unchanged; no identity): the
    # first call after a fork copies the template's pages it touches (the functions' reference
    # counts), and that copying is now the spare's time, not a job's.
    os.setresgid(-1, -1, -1)
    os.setresuid(-1, -1, -1)
    os.umask(os.umask(0o022))
    take_identity({})


def _own_dir(path: str, uid: int, gid: int) -> None:
    """``path`` as a private dir of ``uid`` (its parent is root's): made, or taken over."""
    make_workdir(path)
    os.chown(path, uid, gid)
