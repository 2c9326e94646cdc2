"""The job's identity: the child stops being root between its job frame and the job's first line.

The supervisor (when it runs as root) names an unprivileged uid and the jobs' group in the job
frame's ``identity``; everything the job may write is made its own while the child is still
root, then the child drops every privilege it has, in the one order that leaves none behind:

    workdir and private HOME (root: create, chown) -> supplementary groups dropped -> gid -> uid
    -> no_new_privs (setuid binaries grant nothing) -> dumpable again (/proc/self is the job's)
    -> umask 002 (the shared caches stay writable for the other identities) -> TMPDIR and the
    pip site inside HOME, made as the job

A few syscalls: the fork speed of a template is kept. A child that cannot switch never runs the
job (:class:`IdentityError`): a job runs as its identity or not at all.
"""

from __future__ import annotations

import os
from typing import Any

from sandvisor.prctl import forbid_new_privileges, make_dumpable

#: The jobs' umask: files a job makes in the shared caches are writable by the jobs' group.
JOB_UMASK = 0o002


class IdentityError(Exception):
    """The child could not become the job's identity; the job must not run."""


def take_identity(job: dict[str, Any]) -> None:
    """Become ``job["identity"]`` (uid, gid, home, tmp, site) if the frame names one.

    Raises :class:`IdentityError` when any step fails: the caller reports it and never runs the
    job as root. Without an identity (a supervisor that is not root) nothing changes.
    """
    identity = job.get("identity")
    if not identity:
        return
    uid, gid = int(identity["uid"]), int(identity["gid"])
    try:
        for path in (job["workdir"], identity["home"]):
            _own_dir(path, uid, gid)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise IdentityError(f"cannot become uid {uid} gid {gid}: {exc}") from None
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise IdentityError(f"uid {uid} was not taken whole: {os.getresuid()}")
    if not forbid_new_privileges():
        raise IdentityError("the kernel refused PR_SET_NO_NEW_PRIVS")
    make_dumpable()
    os.umask(JOB_UMASK)
    for path in (identity["tmp"], identity["site"]):
        _make_dir(path)


def _own_dir(path: str, uid: int, gid: int) -> None:
    """``path`` as a private dir of ``uid`` (its parent is root's): made, or taken over."""
    _make_dir(path)
    os.chown(path, uid, gid)


def _make_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # a job run again on a fresh interpreter after its template died
