"""Linux ``prctl`` calls that both sides make: the supervisor and the child runtime.

Stdlib only (ctypes): the child runtime loads it inside any job's interpreter, and the
supervisor, which never imports the child runtime, loads it too.
"""

from __future__ import annotations

import ctypes

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants, instead of pid 1.

    Returns False where the kernel (or a libc without ``prctl``) refuses; never raises. The
    mark is this process's own: a child made by ``fork`` does not inherit it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    """Whether orphaned descendants of this process come to it (as the kernel says now)."""
    flag = ctypes.c_int(0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return flag.value != 0
