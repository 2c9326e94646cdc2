"""Whether jobs run as identities of the pool, and what those identities can reach.

    decide: root, a configured pool, a runtime the identities can read -> switching; otherwise
            jobs run as the supervisor itself, and the one-line reason says why (logged once at
            start, shown by ``sandvisor doctor``)
    prepare_store: the supervisor's own dirs, with the modes the privilege model needs
    access_problem / device_problems: what a uid and gid (no supplementary groups) may do with
            a path, read from its mode bits: the check ``doctor`` makes of the runtime, the
            store and ``/dev/nvidia*``

The decision is a value that callers may pass in (``Supervisor(privilege=...)``): tests of the
fallback run it while root, and a supervisor that is not root never tries to switch.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sandvisor.supervisor.identities import IdentityError, parse_uids
from sandvisor.supervisor.settings import Settings

StatFn = Callable[[str], os.stat_result]

READ, WRITE, SEARCH = 4, 2, 1
#: The shared model caches: group-writable, and setgid so what a job makes there keeps the group.
CACHE_MODE = 0o2775
#: Parents of per-job dirs: traversable, not listable, not writable for jobs.
PARENT_MODE = 0o711


@dataclass(frozen=True)
class Privilege:
    """How jobs run. ``uids`` empty: as the supervisor itself, for ``reason``."""

    uids: tuple[int, ...]
    gid: int
    reason: str

    @property
    def switching(self) -> bool:
        return bool(self.uids)


def decide(settings: Settings, euid: int | None = None, stat_fn: StatFn = os.stat) -> Privilege:
    """Jobs run as the pool's identities when the supervisor is root (``euid``: its effective
    uid, the real one when None), a pool is configured, and an identity can read the runtime
    and reach the store; otherwise as the supervisor, with the reason in one line.

    Raises :class:`IdentityError` for a ``SANDVISOR_JOB_UIDS`` that cannot be parsed.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return Privilege((), settings.job_gid, f"not root (uid {euid}): jobs run as uid {euid}")
    uids = parse_uids(settings.job_uids)
    if not uids:
        return Privilege((), settings.job_gid, "SANDVISOR_JOB_UIDS is empty: jobs run as root")
    for path in runtime_paths(settings):
        problem = access_problem(path, uids[0], settings.job_gid, READ, stat_fn)
        if problem is not None:
            return Privilege((), settings.job_gid, f"jobs run as root: job identities {problem}")
    first, last = uids[0], uids[-1]
    return Privilege(
        uids,
        settings.job_gid,
        f"jobs run as uids {first}-{last} ({len(uids)}), gid {settings.job_gid}",
    )


def runtime_paths(settings: Settings) -> list[str]:
    """What a job needs to read: the standard library, the runtime (sandvisor, cloudpickle,
    msgpack) and the store's home (the jobs' dirs and envs are under it)."""
    import cloudpickle
    import msgpack

    import sandvisor

    modules = (os, sandvisor, cloudpickle, msgpack)
    paths = [os.path.dirname(str(module.__file__)) for module in modules]
    existing = next(
        (str(path) for path in (settings.home, *settings.home.parents) if path.exists()), "/"
    )
    return [*paths, existing]


def access_problem(
    path: str, uid: int, gid: int, want: int, stat_fn: StatFn = os.stat
) -> str | None:
    """None when ``uid``/``gid`` (no other groups) can reach ``path`` and do ``want`` (READ,
    WRITE, SEARCH bits) with it; else what stops it, in words. By mode bits alone (no ACLs)."""
    parts = Path(path).parts
    for depth in range(1, len(parts) + 1):
        current = os.path.join(*parts[:depth])
        last = depth == len(parts)
        try:
            found = stat_fn(current)
        except OSError as exc:
            return f"cannot stat {current}: {exc.strerror or exc}"
        needed = want if last else SEARCH
        if last and stat.S_ISDIR(found.st_mode) and want & READ:
            needed |= SEARCH
        if permitted(found, uid, gid) & needed != needed:
            mode = stat.S_IMODE(found.st_mode)
            return (
                f"cannot {'use' if last else 'pass'} {current} "
                f"(mode {mode:04o}, owner {found.st_uid}:{found.st_gid})"
            )
    return None


def permitted(found: os.stat_result, uid: int, gid: int) -> int:
    """The permission bits (READ|WRITE|SEARCH) that apply to ``uid``/``gid`` on ``found``."""
    mode = found.st_mode
    if uid == found.st_uid:
        return (mode >> 6) & 7
    if gid == found.st_gid:
        return (mode >> 3) & 7
    return mode & 7


def device_problems(
    paths: Iterable[str], uid: int, gid: int, stat_fn: StatFn = os.stat
) -> list[str]:
    """The devices of ``paths`` (``/dev/nvidia*``) a job identity cannot open read-write."""
    problems = []
    for path in paths:
        problem = access_problem(path, uid, gid, READ | WRITE, stat_fn)
        if problem is not None:
            problems.append(problem)
    return problems


def gpu_device_paths(dev: str = "/dev") -> list[str]:
    """The NVIDIA device nodes here (character devices named ``nvidia*``)."""
    try:
        names = sorted(name for name in os.listdir(dev) if name.startswith("nvidia"))
    except OSError:
        return []
    paths = [os.path.join(dev, name) for name in names]
    return [path for path in paths if stat.S_ISCHR(os.stat(path).st_mode)]


def prepare_store(settings: Settings, privilege: Privilege, maker: int = 0) -> None:
    """Make the store's dirs jobs use, with the modes the privilege model needs when switching:
    jobs and private dirs only traversable (each job's own dir inside is its own), the jobs dir
    owned by ``maker`` (the uid whose children make the job dirs: root, or the confined
    templates' uid), the shared Hugging Face cache group-writable for the jobs' group."""
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    if not privilege.switching:
        return
    settings.private_dir.mkdir(parents=True, exist_ok=True)
    for parent in (settings.jobs_dir, settings.private_dir):
        os.chmod(parent, PARENT_MODE)
    os.chown(settings.jobs_dir, maker, maker)
    cache = settings.hf_home
    cache.mkdir(parents=True, exist_ok=True)
    os.chown(cache, -1, privilege.gid)
    os.chmod(cache, CACHE_MODE)


def doctor_line(
    settings: Settings,
    euid: int | None = None,
    devices: Iterable[str] | None = None,
    stat_fn: StatFn = os.stat,
) -> tuple[Literal["ok", "warn", "FAIL"], str]:
    """``(status, line)`` for ``sandvisor doctor``: ``ok`` when jobs run as identities that can
    open every GPU device, ``warn`` when jobs run as the supervisor because it is not root (or
    the pool is empty), ``FAIL`` when it is root but cannot switch, or a job identity cannot
    open a device of ``devices`` (``/dev/nvidia*`` by default): its GPU jobs would fail."""
    euid = os.geteuid() if euid is None else euid
    try:
        privilege = decide(settings, euid, stat_fn)
    except IdentityError as exc:
        return "FAIL", f"SANDVISOR_JOB_UIDS: {exc}"
    if not privilege.switching:
        deliberate = euid != 0 or not parse_uids(settings.job_uids)
        return ("warn" if deliberate else "FAIL"), privilege.reason
    paths = gpu_device_paths() if devices is None else devices
    problems = device_problems(paths, privilege.uids[0], privilege.gid, stat_fn)
    if problems:
        return "FAIL", f"{privilege.reason}, but job identities {'; '.join(problems)}"
    return "ok", privilege.reason
