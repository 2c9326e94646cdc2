"""EnvStore: a request's dependency set -> a cached uv venv layered on the base environment.

The store's two halves: this module leases envs and keeps the store (plan, lease, list, GC,
remove); ``build.py`` builds the missing ones; ``layout.py`` says where everything lies on disk.

Flow of :meth:`EnvStore.acquire`:

    parse + validate (runtime_pins: no clash with the child runtime's own packages)
        -> all satisfied by the base? -> base lease (no venv)
        -> key -> published? -> lease          (hit: a flock and a utime)
                -> single-flight build (build.py) -> lease
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.envs.base import BaseEnvironment
from sandvisor.supervisor.envs.build import EnvBuilder
from sandvisor.supervisor.envs.filelock import FileLock
from sandvisor.supervisor.envs.keys import EnvPlan, env_key
from sandvisor.supervisor.envs.layout import StoreLayout, is_key
from sandvisor.supervisor.envs.requirements import parse_dependencies
from sandvisor.supervisor.envs.runtime_pins import refuse_conflicts, runtime_pins
from sandvisor.supervisor.envs.sysdeps import SystemPackages
from sandvisor.supervisor.errors import EnvError, RequirementRejected
from sandvisor.supervisor.preload_learning import record_path
from sandvisor.supervisor.settings import Settings

BUILD_ATTEMPTS = 3
_PLAN_CACHE_SIZE = 1024

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class EnvLease:
    """An env held for one job: GC never removes it until :meth:`release`."""

    key: str | None  # None: the base environment, no venv
    python: Path
    prefix: Path | None = None
    built: bool = False  # this acquire built the env (as opposed to finding it)
    _lock: FileLock | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` plus what a job in this env needs: VIRTUAL_ENV, and its bin first on PATH."""
        env = dict(base)
        if self.prefix is not None:
            env["VIRTUAL_ENV"] = str(self.prefix)
            env["PATH"] = os.pathsep.join(
                p for p in (str(self.prefix / "bin"), base.get("PATH", "")) if p
            )
        return env

    def __enter__(self) -> EnvLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class EnvInfo:
    key: str
    requirements: tuple[str, ...]
    installed: tuple[str, ...]  # the part not already satisfied by the base
    size_bytes: int
    created: float
    last_used: float
    in_use: bool


class EnvStore:
    """The envs of one store directory (``settings.envs_dir``), shared by every supervisor
    process that uses it: leases, builds (one per key across processes) and GC.

    ``base``: the environment envs are layered on (this interpreter's, read on first use).
    Methods are called from one event loop; ``list``, ``gc`` and ``remove`` also from threads.
    """

    def __init__(self, settings: Settings, base: BaseEnvironment | None = None) -> None:
        self.settings = settings
        self.root = settings.envs_dir
        self._layout = StoreLayout(self.root)
        self._base = base
        self._plans: dict[tuple[str, ...], EnvPlan] = {}
        self._builder = EnvBuilder(
            settings, self._layout, lambda: self.base, lambda key: self.gc(frozenset({key}))
        )
        self._system = SystemPackages(settings)

    @property
    def builds_completed(self) -> int:
        """Envs this process built and published; tests and benchmarks read it."""
        return self._builder.completed

    # ---- acquire ---------------------------------------------------------------------------

    @property
    def base(self) -> BaseEnvironment:
        if self._base is None:
            self._base = BaseEnvironment.current()
        return self._base

    async def acquire(
        self,
        dependencies: list[str] | None,
        on_log: LogFn,
        system_dependencies: list[str] | None = None,
    ) -> EnvLease:
        """A lease on the env for ``dependencies`` (PEP 508 strings), built if missing.

        ``system_dependencies`` (Debian package names) are installed first, where allowed.
        ``on_log`` gets each line of progress (``ProgramOutput`` for uv's or apt's own lines).
        A hit costs a file lock and a ``utime``; a miss waits for the one build of its key.

        The lease keeps GC from removing the env: it must be released (``release()``, or use it
        as a context manager) when the job is done with it. Raises :class:`EnvError`:
        ``INVALID_REQUEST`` for refused strings or names, ``DEPENDENCY_INSTALL`` when the install
        fails. Cancelling the call (the last one waiting for a build) stops the build.
        """
        if system_dependencies:
            await self._system.ensure(system_dependencies, on_log)
        plan = self.plan(dependencies)
        if plan.key is None:
            return EnvLease(key=None, python=Path(sys.executable))
        for _ in range(BUILD_ATTEMPTS):
            lease = self._try_lease(plan.key)
            if lease is not None:
                return lease
            built = await self._builder.join(plan, on_log)
            lease = await self._lease(plan.key, built=built)
            if lease is not None:
                return lease
        raise EnvError(
            f"environment {plan.key} was removed right after each of {BUILD_ATTEMPTS} builds"
        )

    def lease_if_ready(self, dependencies: list[str] | None) -> EnvLease | None:
        """The lease without waiting, when no build is needed (the base, or a published env).

        None means :meth:`acquire` must build. Raises :class:`EnvError` for rejected strings.
        """
        plan = self.plan(dependencies)
        if plan.key is None:
            return EnvLease(key=None, python=Path(sys.executable))
        return self._try_lease(plan.key)

    def lease_again(self, lease: EnvLease) -> EnvLease | None:
        """A second lease on ``lease``'s env (for a holder that outlives the first, an actor),
        without planning its dependencies again; None when GC is deleting it this instant."""
        if lease.key is None:
            return EnvLease(key=None, python=lease.python)
        return self._try_lease(lease.key, built=False)

    def plan(self, dependencies: Iterable[str] | None) -> EnvPlan:
        """Key and install set for a dependency list; cached, since a hit must cost microseconds."""
        if isinstance(dependencies, str):
            raise EnvError("dependencies must be a list of strings", ErrorType.INVALID_REQUEST)
        raw = tuple(dependencies or ())
        cached = self._plans.get(raw) if all(isinstance(d, str) for d in raw) else None
        if cached is not None:
            return cached
        try:
            requirements = parse_dependencies(
                raw, allow_direct_urls=self.settings.allow_direct_urls
            )
            refuse_conflicts(requirements, runtime_pins())
        except RequirementRejected as exc:
            raise EnvError(str(exc), ErrorType.INVALID_REQUEST) from None
        missing = tuple(r for r in requirements if not self.base.satisfies(r.to_packaging()))
        runtime = (pin.spec for pin in runtime_pins())
        key = env_key(requirements, self.base, runtime) if missing else None
        plan = EnvPlan(key=key, requirements=requirements, missing=missing)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)))
        self._plans[raw] = plan
        return plan

    def _try_lease(self, key: str, *, built: bool = False) -> EnvLease | None:
        lock = self._layout.lock(key, "use", exclusive=False)
        if not lock.try_acquire():
            return None  # GC is deleting it this instant
        try:
            os.utime(self._layout.marker(key))  # last used, for LRU
        except FileNotFoundError:
            lock.release()
            return None
        return EnvLease(
            key=key,
            python=self.python(key),
            prefix=self.root / key,
            built=built,
            _lock=lock,
        )

    async def _lease(self, key: str, *, built: bool) -> EnvLease | None:
        lock = self._layout.lock(key, "use", exclusive=False)
        await lock.acquire()
        lock.release()
        return self._try_lease(key, built=built)

    # ---- store maintenance -----------------------------------------------------------------

    def list(self) -> list[EnvInfo]:
        """Published envs, least recently used first."""
        infos = []
        if not self.root.is_dir():
            return infos
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            info = self._info(entry.name)
            if info is not None:
                infos.append(info)
        return sorted(infos, key=lambda info: info.last_used)

    def gc(self, protect: frozenset[str] = frozenset()) -> list[EnvInfo]:
        """Evict least recently used envs until within count and size limits; never one in use."""
        self._layout.ensure()
        gc_lock = self._layout.lock("gc", "lock")
        if not gc_lock.try_acquire():
            return []  # another process is collecting right now
        try:
            self._remove_debris()
            envs = self.list()
            count = len(envs)
            total = sum(info.size_bytes for info in envs)
            removed = []
            for info in envs:
                if count <= self.settings.env_max_count and total <= self.settings.env_max_bytes:
                    break
                if info.key in protect or not self._remove_unused(info.key):
                    continue
                removed.append(info)
                count -= 1
                total -= info.size_bytes
            return removed
        finally:
            gc_lock.release()

    def remove(self, key: str) -> EnvInfo:
        """Delete one env by key; refuses one in use."""
        info = self._info(key) if is_key(key) else None
        if info is None:
            raise EnvError(f"no environment {key!r} in {self.root}", ErrorType.INVALID_REQUEST)
        if not self._remove_unused(key):
            raise EnvError(f"environment {key} is in use", ErrorType.INVALID_REQUEST)
        return info

    def _info(self, key: str) -> EnvInfo | None:
        marker = self._layout.marker(key)
        try:
            meta = json.loads(marker.read_text())
            last_used = marker.stat().st_mtime
        except (OSError, ValueError):
            return None
        return EnvInfo(
            key=key,
            requirements=tuple(meta.get("requirements", ())),
            installed=tuple(meta.get("installed", ())),
            size_bytes=int(meta.get("size_bytes", 0)),
            created=float(meta.get("created", 0.0)),
            last_used=last_used,
            in_use=self._in_use(key),
        )

    def _in_use(self, key: str) -> bool:
        lock = self._layout.lock(key, "use")
        if lock.try_acquire():
            lock.release()
            return False
        return True

    def python(self, key: str) -> Path:
        """The interpreter of env ``key`` (what its templates and learned preloads are keyed by)."""
        return self.root / key / "bin" / "python"

    def _remove_unused(self, key: str) -> bool:
        lock = self._layout.lock(key, "use")
        if not lock.try_acquire():
            return False
        try:
            # Renamed away while leases are locked out: a later lease finds no marker and rebuilds.
            self._layout.discard(self.root / key, key)
        finally:
            lock.release()
        self._layout.empty_trash()
        # What its template learned to preload goes with it: a rebuilt env learns afresh.
        record_path(self.settings.preloads_dir, self.python(key)).unlink(missing_ok=True)
        return True

    def _remove_debris(self) -> None:
        """Staging dirs no live builder holds, trash, and the lock files of keys now gone."""
        layout = self._layout
        for key in layout.staging_keys():
            lock = layout.lock(key, "build")
            if lock.try_acquire():
                try:
                    layout.remove_staging_debris(key)
                finally:
                    lock.release()
        layout.empty_trash()
        for key in layout.build_lock_keys():
            if not (self.root / key).exists():
                self._remove_locks(key)

    def _remove_locks(self, key: str) -> None:
        build = self._layout.lock(key, "build")
        if not build.try_acquire():
            return
        try:
            self._layout.drop_locks(key, build)
        finally:
            build.release()
