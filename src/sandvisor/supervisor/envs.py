"""EnvStore: a request's dependency set -> a cached uv venv layered on the base environment.

Store layout (``settings.envs_dir``)::

    <key>/                      a published env: a uv venv plus sandvisor-env.json
    <key>/sandvisor-env.json    completion marker and metadata; its mtime is "last used"
    .staging/<key>.<pid>.<hex>/ a build in progress (or the debris of a killed one)
    .trash/<key>.<hex>/         an env being deleted
    .locks/<key>.build          exclusive while one process builds <key>
    .locks/<key>.use            shared by every lease of <key>; GC needs it exclusive to delete

Flow of :meth:`EnvStore.acquire`:

    parse + validate (runtime_pins: no clash with the child runtime's own packages)
        -> all satisfied by the base? -> base lease (no venv)
        -> key -> published? -> lease          (hit: a flock and a utime)
                -> single-flight build task -> build lock -> staging -> uv venv
                   -> uv pip install (the runtime's ranges as constraints)
                   -> layering .pth -> marker -> rename -> lease

A build is published by one ``rename`` of a complete staging dir, so a build killed at any point
leaves only debris under ``.staging``, which nothing reads and the next builder of that key
(holding its build lock, so the debris is surely dead) or GC deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.base_env import BaseEnvironment
from sandvisor.supervisor.env_keys import env_key
from sandvisor.supervisor.filelock import FileLock
from sandvisor.supervisor.requirements import (
    NormalizedRequirement,
    RequirementRejected,
    parse_dependencies,
)
from sandvisor.supervisor.runtime_pins import (
    explain_resolution_failure,
    refuse_conflicts,
    runtime_pins,
)
from sandvisor.supervisor.settings import Settings, volume_present
from sandvisor.supervisor.sysdeps import SystemDependencyError, SystemPackages
from sandvisor.supervisor.uv_process import run_uv, uv_environ

MARKER = "sandvisor-env.json"
LAYER_PTH = "zz-sandvisor-base.pth"  # sorts last: the env's own .pth files run first
BUILD_ATTEMPTS = 3
_PLAN_CACHE_SIZE = 1024

LogFn = Callable[[str], None]


class EnvError(Exception):
    """A job's environment could not be provided; the message is what the caller sees."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class EnvLease:
    """An env held for one job: GC never removes it until :meth:`release`."""

    key: str | None  # None: the base environment, no venv
    python: Path
    prefix: Path | None = None
    built: bool = False  # this acquire built the env (as opposed to finding it)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    _lock: FileLock | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` plus what a job here needs: VIRTUAL_ENV, its bin first on PATH, HF_HOME."""
        env = dict(base) | dict(self.extra_env)
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


@dataclass(frozen=True)
class EnvPlan:
    """A dependency list here: its env key (None: the base suffices) and what to install."""

    key: str | None
    requirements: tuple[NormalizedRequirement, ...]
    missing: tuple[NormalizedRequirement, ...]  # what the base does not already satisfy


@dataclass
class _Build:
    task: asyncio.Task[bool] | None = None
    listeners: list[LogFn] = field(default_factory=list)
    waiters: int = 0

    def log(self, line: str) -> None:
        for listener in list(self.listeners):
            listener(line)


class EnvStore:
    def __init__(self, settings: Settings, base: BaseEnvironment | None = None) -> None:
        self.settings = settings
        self.root = settings.envs_dir
        self._base = base
        self._plans: dict[tuple[str, ...], EnvPlan] = {}
        self._builds: dict[str, _Build] = {}
        self._system = SystemPackages(settings)
        self.builds_completed = 0  # in this process; tests and benchmarks read it

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
        """The env for these dependencies, built if missing. Raises :class:`EnvError`."""
        if system_dependencies:
            try:
                await self._system.ensure(system_dependencies, on_log)
            except SystemDependencyError as exc:
                raise EnvError(exc.error_type, str(exc)) from None
        plan = self.plan(dependencies)
        if plan.key is None:
            return EnvLease(key=None, python=Path(sys.executable), extra_env=self._extra_env())
        for _ in range(BUILD_ATTEMPTS):
            lease = self._try_lease(plan.key)
            if lease is not None:
                return lease
            built = await self._join_build(plan, on_log)
            lease = await self._lease(plan.key, built=built)
            if lease is not None:
                return lease
        raise EnvError(
            ErrorType.DEPENDENCY_INSTALL,
            f"environment {plan.key} was removed right after each of {BUILD_ATTEMPTS} builds",
        )

    def lease_if_ready(self, dependencies: list[str] | None) -> EnvLease | None:
        """The lease without waiting, when no build is needed (the base, or a published env).

        None means :meth:`acquire` must build. Raises :class:`EnvError` for rejected strings.
        """
        plan = self.plan(dependencies)
        if plan.key is None:
            return EnvLease(key=None, python=Path(sys.executable), extra_env=self._extra_env())
        return self._try_lease(plan.key)

    def plan(self, dependencies: Iterable[str] | None) -> EnvPlan:
        """Key and install set for a dependency list; cached, since a hit must cost microseconds."""
        if isinstance(dependencies, str):
            raise EnvError(ErrorType.INVALID_REQUEST, "dependencies must be a list of strings")
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
            raise EnvError(ErrorType.INVALID_REQUEST, str(exc)) from None
        missing = tuple(r for r in requirements if not self.base.satisfies(r.to_packaging()))
        runtime = (pin.spec for pin in runtime_pins())
        key = env_key(requirements, self.base, runtime) if missing else None
        plan = EnvPlan(key=key, requirements=requirements, missing=missing)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)))
        self._plans[raw] = plan
        return plan

    def _try_lease(self, key: str, *, built: bool = False) -> EnvLease | None:
        lock = FileLock(self._lock_path(key, "use"), exclusive=False)
        if not lock.try_acquire():
            return None  # GC is deleting it this instant
        marker = self.root / key / MARKER
        try:
            os.utime(marker)  # last used, for LRU
        except FileNotFoundError:
            lock.release()
            return None
        return EnvLease(
            key=key,
            python=self.root / key / "bin" / "python",
            prefix=self.root / key,
            built=built,
            extra_env=self._extra_env(),
            _lock=lock,
        )

    async def _lease(self, key: str, *, built: bool) -> EnvLease | None:
        lock = FileLock(self._lock_path(key, "use"), exclusive=False)
        await lock.acquire()
        lock.release()
        return self._try_lease(key, built=built)

    def _extra_env(self) -> dict[str, str]:
        # Models downloaded by jobs belong on the network volume, not the container disk.
        if volume_present() and "HF_HOME" not in os.environ:
            return {"HF_HOME": str(self.settings.home / "huggingface")}
        return {}

    # ---- build -----------------------------------------------------------------------------

    async def _join_build(self, plan: EnvPlan, on_log: LogFn) -> bool:
        """Wait for this process's one build of ``plan.key``, starting it if none runs.

        True when this process built it, False when another process had.
        """
        assert plan.key is not None
        build = self._builds.get(plan.key)
        if build is None:
            build = _Build()
            build.task = asyncio.create_task(self._build(plan, build))
            self._builds[plan.key] = build
            build.task.add_done_callback(lambda _: self._forget(plan.key, build))
        build.listeners.append(on_log)
        build.waiters += 1
        assert build.task is not None
        try:
            return await asyncio.shield(build.task)
        except asyncio.CancelledError:
            if not build.task.done():
                await self._leave_build(build)
            raise
        finally:
            build.waiters -= 1
            with contextlib.suppress(ValueError):
                build.listeners.remove(on_log)

    async def _leave_build(self, build: _Build) -> None:
        """A waiter was cancelled; the last one to leave stops the build (and its uv)."""
        assert build.task is not None
        if build.waiters == 1:
            build.task.cancel()
            with contextlib.suppress(BaseException):
                await build.task

    def _forget(self, key: str | None, build: _Build) -> None:
        if key is not None and self._builds.get(key) is build:
            del self._builds[key]

    async def _build(self, plan: EnvPlan, build: _Build) -> bool:
        assert plan.key is not None
        key = plan.key
        self._ensure_layout()
        build_lock = FileLock(self._lock_path(key, "build"))
        if not build_lock.try_acquire():
            build.log(f"another process is building environment {key}; waiting")
            await build_lock.acquire()
        try:
            if (self.root / key / MARKER).exists():
                return False  # another process built it while we waited
            self._remove_staging_debris(key)
            staging = self.root / ".staging" / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
            try:
                await self._populate(staging, plan, build.log)
                self._publish(staging, key)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, True))
                self._drop_locks(key, build_lock)  # a failed build leaves nothing at all
                raise
        finally:
            build_lock.release()
        self.builds_completed += 1
        await asyncio.to_thread(self.gc, frozenset({key}))
        return True

    async def _populate(self, staging: Path, plan: EnvPlan, log: LogFn) -> None:
        started = time.monotonic()
        shown = ", ".join(r.spec for r in plan.requirements)
        log(f"building environment {plan.key} for {shown}")
        env = uv_environ(self.settings)
        cwd = staging.parent
        await self._uv(
            [
                "venv",
                "--quiet",
                "--no-config",
                "--relocatable",
                "--python",
                str(self.base.python),
                staging,
            ],
            env,
            cwd,
            log,
        )
        await self._install(staging, plan, env, cwd, log)
        self._write_layer(staging)
        size = await asyncio.to_thread(disk_usage, staging)
        self._write_marker(staging, plan, size)
        log(f"environment {plan.key} ready in {time.monotonic() - started:.1f}s")

    async def _install(
        self, staging: Path, plan: EnvPlan, env: dict[str, str], cwd: Path, log: LogFn
    ) -> None:
        # What the base already has stays visible through layering; as constraints, uv still
        # resolves the new packages against the versions the request asked for. The runtime's
        # own ranges hold in every env: what is installed here shadows the base's copy.
        pins = runtime_pins()
        satisfied = [r.spec for r in plan.requirements if r not in plan.missing]
        constraints = staging / "sandvisor-constraints.txt"
        constraints.write_text("".join(f"{spec}\n" for spec in satisfied + [p.spec for p in pins]))
        python = staging / "bin" / "python"
        install: list[str | Path] = ["pip", "install", "--no-config", "--python", python]
        install += ["--constraint", constraints]
        try:
            await self._uv([*install, "--", *(r.spec for r in plan.missing)], env, cwd, log)
        except EnvError as exc:
            explained = explain_resolution_failure(str(exc), pins)
            if explained is None:
                raise
            raise EnvError(exc.error_type, f"{explained}\n{exc}") from None

    async def _uv(self, args: list[str | Path], env: dict[str, str], cwd: Path, log: LogFn) -> None:
        result = await run_uv([str(a) for a in args], env=env, cwd=cwd, on_log=log)
        if not result.ok:
            raise EnvError(ErrorType.DEPENDENCY_INSTALL, result.describe_failure())

    def _write_layer(self, staging: Path) -> None:
        """The .pth that puts the base's site dirs after the env's own: env packages win."""
        site_packages = next((staging / "lib").glob("python*/site-packages"))
        calls = "; ".join(f"site.addsitedir({str(d)!r})" for d in self.base.site_dirs)
        (site_packages / LAYER_PTH).write_text(f"import site; {calls}\n")

    def _write_marker(self, staging: Path, plan: EnvPlan, size: int) -> None:
        meta = {
            "key": plan.key,
            "requirements": [r.spec for r in plan.requirements],
            "installed": [r.spec for r in plan.missing],
            "base": {"python": str(self.base.python), "fingerprint": self.base.fingerprint},
            "tag": self.base.tag,
            "size_bytes": size,
            "created": time.time(),
        }
        (staging / MARKER).write_text(json.dumps(meta, indent=2) + "\n")

    def _publish(self, staging: Path, key: str) -> None:
        final = self.root / key
        if final.exists():
            # A dir without marker (we checked under the build lock): nothing uses it.
            self._discard(final, key)
        os.rename(staging, final)

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
        self._ensure_layout()
        gc_lock = FileLock(self.root / ".locks" / "gc.lock")
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
        info = self._info(key) if _is_key(key) else None
        if info is None:
            raise EnvError(ErrorType.INVALID_REQUEST, f"no environment {key!r} in {self.root}")
        if not self._remove_unused(key):
            raise EnvError(ErrorType.INVALID_REQUEST, f"environment {key} is in use")
        return info

    def _info(self, key: str) -> EnvInfo | None:
        marker = self.root / key / MARKER
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
        lock = FileLock(self._lock_path(key, "use"))
        if lock.try_acquire():
            lock.release()
            return False
        return True

    def _remove_unused(self, key: str) -> bool:
        lock = FileLock(self._lock_path(key, "use"))
        if not lock.try_acquire():
            return False
        try:
            # Renamed away while leases are locked out: a later lease finds no marker and rebuilds.
            self._discard(self.root / key, key)
        finally:
            lock.release()
        self._empty_trash()
        return True

    def _discard(self, path: Path, key: str) -> None:
        self._ensure_layout()
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, self.root / ".trash" / f"{key}.{secrets.token_hex(4)}")

    def _remove_debris(self) -> None:
        """Staging dirs no live builder holds, trash, and the lock files of keys now gone."""
        staging_root = self.root / ".staging"
        for key in {entry.name.split(".")[0] for entry in staging_root.iterdir()}:
            lock = FileLock(self._lock_path(key, "build"))
            if lock.try_acquire():
                try:
                    self._remove_staging_debris(key)
                finally:
                    lock.release()
        self._empty_trash()
        for path in (self.root / ".locks").glob("*.build"):
            key = path.name.removesuffix(".build")
            if _is_key(key) and not (self.root / key).exists():
                self._remove_locks(key)

    def _remove_locks(self, key: str) -> None:
        build = FileLock(self._lock_path(key, "build"))
        if not build.try_acquire():
            return
        try:
            self._drop_locks(key, build)
        finally:
            build.release()

    def _drop_locks(self, key: str, build: FileLock) -> None:
        """Delete ``key``'s lock files; ``build`` is its build lock, held. Skipped while leased."""
        use = FileLock(self._lock_path(key, "use"))
        if use.try_acquire():
            use.unlink()
            build.unlink()
            use.release()

    def _remove_staging_debris(self, key: str) -> None:
        """Only called under ``key``'s build lock, so these belong to dead builds."""
        for entry in (self.root / ".staging").glob(f"{key}.*"):
            shutil.rmtree(entry, ignore_errors=True)

    def _empty_trash(self) -> None:
        for entry in (self.root / ".trash").iterdir():
            shutil.rmtree(entry, ignore_errors=True)

    def _ensure_layout(self) -> None:
        for sub in (".staging", ".trash", ".locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _lock_path(self, key: str, kind: str) -> Path:
        locks = self.root / ".locks"
        if not locks.is_dir():
            locks.mkdir(parents=True, exist_ok=True)
        return locks / f"{key}.{kind}"


def disk_usage(root: Path) -> int:
    """Bytes on disk under ``root``, each inode once (uv hardlinks files from its cache)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _is_key(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)
