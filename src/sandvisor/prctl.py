"""Linux ``prctl`` calls that both sides make: the supervisor and the child runtime.

Stdlib only (ctypes): the child runtime loads it inside any job's interpreter, and the
supervisor, which never imports the child runtime, loads it too. The C library is opened once
per process: a template opens it before it forks, so a job's calls cost a syscall, not a dlopen.
"""

from __future__ import annotations

import ctypes
from typing import Any

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38

_libc: Any = None


def _prctl(option: int, arg: Any = 0) -> int:
    """``prctl(option, arg, 0, 0, 0)``'s return value; -1 where the C library has none."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return int(_libc.prctl(option, arg, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants, instead of pid 1.

    Returns False where the kernel (or a libc without ``prctl``) refuses; never raises. The
    mark is this process's own: a child made by ``fork`` does not inherit it.
    """
    return _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


def is_subreaper() -> bool:
    """Whether orphaned descendants of this process come to it (as the kernel says now)."""
    flag = ctypes.c_int(0)
    if _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag)) != 0:
        return False
    return flag.value != 0


def forbid_new_privileges() -> bool:
    """``PR_SET_NO_NEW_PRIVS``: no exec of this process or its descendants gains privileges
    (setuid and setcap binaries such as ``su``/``sudo`` run with the caller's). Irrevocable;
    False where the kernel refuses."""
    return _prctl(PR_SET_NO_NEW_PRIVS, 1) == 0


def make_dumpable() -> bool:
    """``PR_SET_DUMPABLE`` 1: after a switch away from root the kernel clears the flag, which
    makes ``/proc/self`` root's (a job could not list its own fds); set again, it is the new
    uid's, and still closed to every other uid. False where the kernel refuses."""
    return _prctl(PR_SET_DUMPABLE, 1) == 0
