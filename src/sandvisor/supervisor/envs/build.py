"""Building an env: one build per key in this process (single-flight) and across processes
(the key's build lock), in a staging dir published by one ``rename``.

    build lock -> staging -> uv venv -> uv pip install (the runtime's ranges as constraints)
               -> layering .pth -> marker -> rename

A build killed at any point leaves only debris under ``.staging``, which nothing reads and the
next builder of that key (holding its build lock, so the debris is surely dead) or GC deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandvisor.supervisor.envs.base import BaseEnvironment
from sandvisor.supervisor.envs.keys import EnvPlan
from sandvisor.supervisor.envs.layout import MARKER, StoreLayout, disk_usage
from sandvisor.supervisor.envs.runtime_pins import explain_resolution_failure, runtime_pins
from sandvisor.supervisor.envs.uv import run_uv, uv_environ
from sandvisor.supervisor.errors import EnvError
from sandvisor.supervisor.settings import Settings

LAYER_PTH = "zz-sandvisor-base.pth"  # sorts last: the env's own .pth files run first

LogFn = Callable[[str], None]


@dataclass
class _Build:
    task: asyncio.Task[bool] | None = None
    listeners: list[LogFn] = field(default_factory=list)
    waiters: int = 0

    def log(self, line: str) -> None:
        for listener in list(self.listeners):
            listener(line)


class EnvBuilder:
    """Builds and publishes envs into ``layout``; ``built(key)`` runs after each publish."""

    def __init__(
        self,
        settings: Settings,
        layout: StoreLayout,
        base: Callable[[], BaseEnvironment],
        built: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self._layout = layout
        self._base = base
        self._built = built
        self._builds: dict[str, _Build] = {}
        self.completed = 0  # builds published by this process

    async def join(self, plan: EnvPlan, on_log: LogFn) -> bool:
        """Wait for this process's one build of ``plan.key``, starting it if none runs.

        True when this process built it, False when another process had. Raises
        :class:`EnvError` when the build fails. Cancelling the last waiter stops the build.
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
                await self._leave(build)
            raise
        finally:
            build.waiters -= 1
            with contextlib.suppress(ValueError):
                build.listeners.remove(on_log)

    async def _leave(self, build: _Build) -> None:
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
        layout = self._layout
        layout.ensure()
        build_lock = layout.lock(key, "build")
        if not build_lock.try_acquire():
            build.log(f"another process is building environment {key}; waiting")
            await build_lock.acquire()
        try:
            if layout.marker(key).exists():
                return False  # another process built it while we waited
            layout.remove_staging_debris(key)
            staging = layout.new_staging(key)
            try:
                await self._populate(staging, plan, build.log)
                self._publish(staging, key)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, True))
                layout.drop_locks(key, build_lock)  # a failed build leaves nothing at all
                raise
        finally:
            build_lock.release()
        self.completed += 1
        await asyncio.to_thread(self._built, key)
        return True

    async def _populate(self, staging: Path, plan: EnvPlan, log: LogFn) -> None:
        started = time.monotonic()
        shown = ", ".join(r.spec for r in plan.requirements)
        log(f"building environment {plan.key} for {shown}")
        env = uv_environ(self.settings)
        cwd = staging.parent
        base = self._base()
        venv: list[str | Path] = ["venv", "--quiet", "--no-config", "--relocatable"]
        await self._uv([*venv, "--python", str(base.python), staging], env, cwd, log)
        await self._install(staging, plan, env, cwd, log)
        await compile_bytecode(base.python, staging)
        self._write_layer(staging, base)
        size = await asyncio.to_thread(disk_usage, staging)
        self._write_marker(staging, plan, base, size)
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
            raise EnvError(f"{explained}\n{exc}", exc.error_type) from None

    async def _uv(self, args: list[str | Path], env: dict[str, str], cwd: Path, log: LogFn) -> None:
        result = await run_uv([str(a) for a in args], env=env, cwd=cwd, on_log=log)
        if not result.ok:
            raise EnvError(result.describe_failure())

    def _write_layer(self, staging: Path, base: BaseEnvironment) -> None:
        """The .pth that puts the base's site dirs after the env's own: env packages win."""
        site_packages = next((staging / "lib").glob("python*/site-packages"))
        calls = "; ".join(f"site.addsitedir({str(d)!r})" for d in base.site_dirs)
        (site_packages / LAYER_PTH).write_text(f"import site; {calls}\n")

    def _write_marker(self, staging: Path, plan: EnvPlan, base: BaseEnvironment, size: int) -> None:
        meta = {
            "key": plan.key,
            "requirements": [r.spec for r in plan.requirements],
            "installed": [r.spec for r in plan.missing],
            "base": {"python": str(base.python), "fingerprint": base.fingerprint},
            "tag": base.tag,
            "size_bytes": size,
            "created": time.time(),
        }
        (staging / MARKER).write_text(json.dumps(meta, indent=2) + "\n")

    def _publish(self, staging: Path, key: str) -> None:
        final = self._layout.root / key
        if final.exists():
            # A dir without marker (we checked under the build lock): nothing uses it.
            self._layout.discard(final, key)
        os.rename(staging, final)


async def compile_bytecode(python: Path | str, venv: Path) -> None:
    """Compile the env's own packages, as the store's owner: its interpreters (confined
    templates, jobs) cannot write its ``__pycache__``, and would compile every module they
    import at every start. Not with the env's interpreter (uv's ``--compile-bytecode`` starts
    it, and its site runs the packages' ``.pth`` files: code a request chose, as root) but with
    the base ``python`` the env was made from, isolated and without site (``-I -S``): the same
    Python, so the same cache tag. A module that does not compile is left to compile at import, as without this step."""
    process = await asyncio.create_subprocess_exec(
        str(python),
        "-I",
        "-S",
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        str(venv / "lib"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await process.wait()
