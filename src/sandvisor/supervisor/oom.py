"""Our memory cgroup: its limit, and its count of OOM kills (evidence that a SIGKILL was the OOM killer).

cgroup v2 keeps it as ``oom_kill`` in ``memory.events``, v1 in ``memory.oom_control``. A job
whose child died of a SIGKILL we did not send while this count went up was killed by the OOM
killer (or shared the machine with one that was); the count is read before and after each job.
None where no cgroup file says: the classification then relies on peak memory alone.
"""

from __future__ import annotations

import os
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def _cgroup_files(
    v2_name: str, v1_name: str, proc_cgroup: Path = _PROC_CGROUP, root: Path = _CGROUP_ROOT
) -> list[Path]:
    """Where our cgroup's file of that name may be, most specific first.

    ``proc_cgroup``: the ``/proc/<pid>/cgroup`` to read; ``root``: where cgroups are mounted.
    """
    files = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            files.append(root / relative / v2_name)
        elif "memory" in controllers.split(","):
            files.append(root / "memory" / relative / v1_name)
    # Inside a cgroup namespace the path above may not be mounted; the mount root is ours then.
    files += [root / v2_name, root / "memory" / v1_name]
    return files


def cgroup_memory_limit(proc_cgroup: Path = _PROC_CGROUP, root: Path = _CGROUP_ROOT) -> int | None:
    """Bytes our memory cgroup may use, or None when unlimited or unknown.

    In a container this is often far below the host's RAM that psutil reports, and it is the
    limit at which the kernel's OOM killer acts. The arguments are as for :func:`_cgroup_files`.
    """
    for path in _cgroup_files("memory.max", "memory.limit_in_bytes", proc_cgroup, root):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        # v2 says "max"; v1 says a number near 2**63 for no limit.
        return int(text) if text.isdigit() and int(text) < 2**60 else None
    return None


def _read_oom_kill(path: Path) -> int | None:
    try:  # raw reads: this runs before every job, and a text file object costs several times more
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 4096).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def oom_kill_source(proc_cgroup: Path = _PROC_CGROUP, root: Path = _CGROUP_ROOT) -> Path | None:
    """The file that counts our cgroup's OOM kills, or None where no file says."""
    files = _cgroup_files("memory.events", "memory.oom_control", proc_cgroup, root)
    return next((f for f in files if _read_oom_kill(f) is not None), None)


_source: Path | None = None
_searched = False


def oom_kill_count() -> int | None:
    """OOM kills so far in the supervisor's memory cgroup, or None where the kernel does not say."""
    global _source, _searched
    if not _searched:  # found once: the cgroup of a process does not move under it
        _searched = True
        _source = oom_kill_source()
    return None if _source is None else _read_oom_kill(_source)
