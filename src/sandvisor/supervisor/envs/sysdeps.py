"""A request's ``system_dependencies``: Debian packages installed with apt-get, when allowed.

Names are checked against Debian's package name rules before anything runs (they become
apt-get arguments). Packages dpkg already has are skipped, so a request naming only those costs
one ``dpkg-query``. Installing needs root and ``SANDVISOR_ALLOW_SYSTEM_DEPENDENCIES``; without
them the job fails naming what is missing. apt and dpkg allow one user at a time, so installs run
under one lock shared by every supervisor process on the machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.envs.filelock import FileLock
from sandvisor.supervisor.errors import EnvError
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.streaming import run_streaming

# Debian policy 5.6.7: lowercase letters, digits, + - . ; at least two characters, starting
# alphanumeric. An optional architecture qualifier (":amd64") is accepted as apt does.
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9][a-z0-9-]*)?")
_LOCK_PATH = Path("/run/lock/sandvisor-apt.lock")
_APT_LISTS = Path("/var/lib/apt/lists")


def validate_names(names: Iterable[object]) -> list[str]:
    """The names, deduplicated in order; raises naming every invalid one."""
    items = list(names)
    bad = [n for n in items if not isinstance(n, str) or not _NAME.fullmatch(n)]
    if bad:
        shown = ", ".join(repr(n) for n in bad)
        raise EnvError(
            f"system_dependencies rejected: {shown} (not a Debian package name)",
            ErrorType.INVALID_REQUEST,
        )
    return list(dict.fromkeys(str(n) for n in items))


class SystemPackages:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = asyncio.Lock()

    async def ensure(self, names: Iterable[object], on_log: Callable[[str], None]) -> None:
        wanted = validate_names(names)
        missing = await missing_packages(wanted)
        if not missing:
            return
        if not self.settings.allow_system_dependencies or os.geteuid() != 0:
            why = (
                "SANDVISOR_ALLOW_SYSTEM_DEPENDENCIES is off"
                if not self.settings.allow_system_dependencies
                else "the supervisor is not running as root"
            )
            raise EnvError(f"system_dependencies not installed: {', '.join(missing)} ({why})")
        async with self._lock, FileLock(_lock_path()):
            missing = await missing_packages(wanted)  # another process may have installed them
            if missing:
                await _apt_install(missing, on_log)


async def missing_packages(names: list[str]) -> list[str]:
    """Those of ``names`` dpkg does not report as installed."""
    if not names:
        return []
    if shutil.which("dpkg-query") is None:
        return list(names)
    process = await asyncio.create_subprocess_exec(
        "dpkg-query",
        "-W",
        "-f=${Package}\t${db:Status-Abbrev}\n",
        "--",
        *names,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    installed = set()
    for line in out.decode(errors="replace").splitlines():
        package, _, status = line.partition("\t")
        if status.startswith("ii"):
            installed.add(package)
    return [n for n in names if n.split(":")[0] not in installed]


async def _apt_install(names: list[str], on_log: Callable[[str], None]) -> None:
    env = dict(os.environ) | {"DEBIAN_FRONTEND": "noninteractive"}
    cwd = Path("/")
    if not any(_APT_LISTS.glob("*_Packages*")):
        # Container images ship without package lists.
        await _apt(["apt-get", "update"], env, cwd, on_log)
    on_log(f"installing system packages {', '.join(names)}")  # the job's output marks it ours
    await _apt(
        ["apt-get", "install", "-y", "--no-install-recommends", "--", *names], env, cwd, on_log
    )


async def _apt(argv: list[str], env: dict[str, str], cwd: Path, log: Callable[[str], None]) -> None:
    result = await run_streaming(argv, env=env, cwd=cwd, on_log=log, program=argv[0])
    if not result.ok:
        raise EnvError(result.describe_failure())


def _lock_path() -> Path:
    _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    return _LOCK_PATH
