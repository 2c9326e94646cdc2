"""The Supervisor: takes FunctionRequests, runs each in its own child, answers FunctionResponses.

    request (dict or model) -> validate -> limits -> environment -> JobRun or instance call
      -> FunctionResponse

Every request gets a response: bad input, a failed install, a crashed child and a bug of ours
all come back as ``success: false`` with a one-line reason first. Nothing a job does can raise
out of ``run()``; only cancelling the caller's own task does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sandvisor.prctl import become_subreaper
from sandvisor.protocol.models import ErrorType, FunctionRequest, FunctionResponse
from sandvisor.supervisor.cleanup import DirRemover
from sandvisor.supervisor.confinement import Confinement, decide_confinement
from sandvisor.supervisor.context import JobContext
from sandvisor.supervisor.envs import EnvLease, EnvStore
from sandvisor.supervisor.envs.install_progress import InstallProgress
from sandvisor.supervisor.errors import InvalidRequest, SandvisorError
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.gpus import GpuPool, detect_gpus
from sandvisor.supervisor.heartbeat import heartbeat
from sandvisor.supervisor.identities import IdentityPool, lock_dir_for
from sandvisor.supervisor.instances import InstanceRegistry
from sandvisor.supervisor.intake import parse_request
from sandvisor.supervisor.job import JobRun, JobSpec
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.manifest import resolve_deployed
from sandvisor.supervisor.outcome import failed, failure
from sandvisor.supervisor.policy import child_environment
from sandvisor.supervisor.preload_trials import PreloadPolicy
from sandvisor.supervisor.privilege import Privilege, decide, prepare_store
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.shared_sweep import sweeper
from sandvisor.supervisor.streaming import ProgramOutput
from sandvisor.supervisor.templates import TemplateLost, TemplatePool
from sandvisor.supervisor.warm_spares import WarmPolicy

log = logging.getLogger(__name__)

#: Events a ``stream()`` consumer may fall behind by before the job's pipes are paused.
STREAM_BUFFER = 256


#: A job id is a file and process-name component: no separators, no leading dot, bounded.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def check_job_id(job_id: str, running: Mapping[str, object]) -> None:
    """Refuse an id that cannot name the job's resources, or that names a running job's.

    Two live jobs of one id would share the cancel registry's entry (the first to end removes
    the other's) and the marks their processes are found by (each would kill the other's).
    """
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidRequest(
            f"job id {job_id!r} is not 1-128 letters, digits, '_', '.' or '-' (not starting"
            " with '.', '_' or '-')"
        )
    if job_id in running:
        raise InvalidRequest(f"job id {job_id!r} is already running; a running job's id is unique")


class Supervisor:
    """Runs FunctionRequests, each in a child process of its own; one per process is enough.

    Use it as an async context manager: entering makes this process a child subreaper, finds the
    GPUs, reads the base environment and warms the base template (when ``settings.templates``);
    leaving cancels the running jobs, waits for them, and closes instances and templates.
    ``run``, ``stream`` and ``cancel`` may then be called from many tasks of its event loop at
    once. ``settings``: from ``SANDVISOR_*`` variables when not given.
    """

    def __init__(
        self, settings: Settings | None = None, *, privilege: Privilege | None = None
    ) -> None:
        """``privilege``: how jobs run (see ``privilege.decide``, which decides when None)."""
        self.settings = settings or Settings.from_env()
        self._privilege = privilege
        self.identities: IdentityPool | None = None
        self.confinement: Confinement | None = None  # decided at start (confinement.py)
        self._jobs: dict[str, JobContext] = {}
        self._templates: TemplatePool | None = None
        self._base_env: dict[str, str] = {}
        self._workdirs = DirRemover()
        self.envs = EnvStore(self.settings)
        self.instances: InstanceRegistry | None = None
        self.gpus = GpuPool([])

    async def __aenter__(self) -> Supervisor:
        privilege = self.privilege
        self.confinement, confined = await asyncio.to_thread(
            decide_confinement, self.settings, privilege
        )
        prepare_store(self.settings, privilege, self.confinement.uid if self.confinement else 0)
        if privilege.switching:
            (log.info if self.confinement else log.warning)("confinement: %s", confined)
        if privilege.switching:
            lock_dir = lock_dir_for(self.settings.home)
            self.identities = IdentityPool(
                privilege.uids,
                privilege.gid,
                lock_dir,
                homes=self.settings.private_dir,
                # What a uid left in /tmp, /dev/shm, SysV IPC... goes before its next holder.
                sweep=sweeper(privilege.gid, skip=(self.settings.home,)),
            )
            await self.identities.start()
            log.info("privilege: %s", privilege.reason)
        else:
            log.warning("privilege: %s", privilege.reason)  # once, at start
        # Orphans of jobs we spawn come to us, so that they are found, killed and reaped.
        become_subreaper()
        self.gpus = GpuPool(await asyncio.to_thread(detect_gpus, self.settings))
        await asyncio.to_thread(lambda: self.envs.base)  # read the base env once, off the loop
        self._base_env = child_environment(self.settings, os.environ, privilege.switching)
        if self.settings.templates:
            self._templates = TemplatePool(
                self.settings.max_templates,
                self.settings.preload,
                self._base_env,
                PreloadPolicy.from_settings(self.settings),
                WarmPolicy.from_settings(self.settings),
                self.confinement,
            )
            try:
                await self._templates.get(sys.executable)  # warm before any job
            except TemplateLost as exc:  # jobs still run, each in a fresh interpreter
                log.warning("%s; jobs start fresh interpreters for now", exc)
        self.instances = InstanceRegistry(
            self.settings, self._templates, self.envs, self.gpus, self.identities
        )
        self.instances.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for run in list(self._jobs.values()):
            run.stop(ErrorType.CANCELLED, "cancelled: the supervisor is shutting down")
        while self._jobs:
            await asyncio.sleep(0.01)
        if self.instances is not None:
            await self.instances.close()  # before the templates their actors were forked from
        if self._templates is not None:
            await self._templates.close()
        await self._workdirs.close()
        if self.identities is not None:
            await self.identities.close()

    # -- API ---------------------------------------------------------------------------------

    async def run(
        self, request: FunctionRequest | Mapping[str, Any], job_id: str | None = None
    ) -> FunctionResponse:
        """Run one job to its end; its response, whatever happened.

        ``request``: a ``FunctionRequest``, a dict of its fields, or any model with
        ``model_dump`` (runpod-flash's own). ``job_id``: 1-128 letters, digits, ``_``, ``.``,
        ``-``, not starting with ``.``, ``_`` or ``-``, and not that of a running job (ids are
        unique among running jobs); a fresh one when None.

        Never raises for anything a request or a job does: bad input, a refused limit, a failed
        install, a crash, a timeout or a bug of ours all come back as ``success=False`` with
        ``error_type`` and a one-line reason first in ``error``. Only cancelling the calling
        task raises (``CancelledError``); the job is then stopped.
        """
        return await self._execute(request, job_id or new_job_id(), None)

    async def stream(
        self,
        request: FunctionRequest | Mapping[str, Any],
        job_id: str | None = None,
        *,
        display: bool = False,
    ) -> AsyncIterator[LogEvent | FunctionResponse]:
        """Live events of the job, then its FunctionResponse.

        Closing the iterator early (``contextlib.aclosing``, or ``aclose()``) cancels the job.

        ``display``: also fill the response's ``result_display`` (for terminals).
        """
        events: asyncio.Queue[LogEvent] = asyncio.Queue(STREAM_BUFFER)
        task = asyncio.ensure_future(
            self._execute(request, job_id or new_job_id(), events.put, display)
        )
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                yield task.result()
                return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def cancel(self, job_id: str) -> bool:
        """Stop a running job; its response says ``cancelled``. False if no such job runs."""
        run = self._jobs.get(job_id)
        if run is None:
            return False
        run.stop(ErrorType.CANCELLED, "cancelled by request")
        return True

    @property
    def privilege(self) -> Privilege:
        """How this supervisor's jobs run: as identities of the pool, or as itself (and why)."""
        if self._privilege is None:
            self._privilege = decide(self.settings)
        return self._privilege

    @property
    def running_jobs(self) -> list[str]:
        return list(self._jobs)

    @property
    def templates(self) -> TemplatePool | None:
        """The warm templates (None when jobs are spawned fresh): for status, tests, benchmarks."""
        return self._templates

    # -- one job -----------------------------------------------------------------------------

    async def _execute(
        self, request: Any, job_id: str, on_event: Any, display: bool = False
    ) -> FunctionResponse:
        started = time.monotonic()
        try:
            check_job_id(job_id, self._jobs)
            parsed = parse_request(request)
            limits = Limits.resolve(self.settings, parsed.limits, gpus_available=self.gpus.total)
            spec = self._spec(job_id, parsed, limits)
            spec.display = display
        except SandvisorError as exc:
            return failed(exc)
        # Registered before the first await: the id check above and this are one step.
        run = JobContext(spec, on_event)
        self._jobs[job_id] = run
        try:
            lease = await self._environment(run, parsed)
            if isinstance(lease, FunctionResponse):
                return lease
            with lease:
                spec.python = str(lease.python)
                spec.venv = lease
                if parsed.execution_type == "class" and self.instances is not None:
                    return await self.instances.call(run, limits, lease)
                return await JobRun(run, self._templates, self.gpus, self.identities).execute()
        except asyncio.CancelledError:
            raise
        except SandvisorError as exc:  # the environment could not be had
            return failed(exc, stdout=run.output.text())
        except Exception as exc:  # a bug of ours must still answer, and not take the worker down
            log.exception("job %s failed inside the supervisor", job_id)
            return failure(
                ErrorType.LOST,
                f"lost: internal error in sandvisor ({type(exc).__name__}: {exc})",
                stdout=run.output.text(),
                timings={"total": round((time.monotonic() - started) * 1000, 3)},
            )
        finally:
            self._jobs.pop(job_id, None)
            self._schedule_cleanup(spec.workdir)

    async def _environment(
        self, run: JobContext, request: FunctionRequest
    ) -> EnvLease | FunctionResponse:
        """The job's env lease, or a failure response when the job was stopped while waiting.

        Raises :class:`EnvError` when the env cannot be had.
        """
        started = time.monotonic()
        lease = None
        if not request.system_dependencies:
            lease = self.envs.lease_if_ready(request.dependencies)
        if lease is None:
            lease = await self._build_environment(run, request)
        if isinstance(lease, EnvLease):
            run.environment_ready((time.monotonic() - started) * 1000)
        return lease

    async def _build_environment(
        self, run: JobContext, request: FunctionRequest
    ) -> EnvLease | FunctionResponse:
        """Build (or wait for) the env, its install output live in the job's events."""
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        install = InstallProgress()  # what the wait's notices say of the build

        async def relay() -> None:
            while (line := await lines.get()) is not None:
                if isinstance(line, ProgramOutput):  # uv's (or apt-get's) own output
                    install.feed(line)
                    await run.emit(LogEvent("log", line, time.time(), "INFO"))
                else:
                    await run.say(line)

        relaying = asyncio.ensure_future(relay())
        acquiring = asyncio.ensure_future(
            self.envs.acquire(request.dependencies, lines.put_nowait, request.system_dependencies)
        )
        stop = asyncio.ensure_future(run.stopped())
        try:
            # A hung install (an index that never answers) is bounded by the job's own timeout.
            timeout_s = run.spec.limits.timeout_s
            interval_s = self.settings.wait_notice_interval_s
            async with heartbeat(run.say, "installing dependencies", interval_s, install.summary):
                await asyncio.wait(
                    {acquiring, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            if not acquiring.done() and not stop.done():
                run.stop(
                    ErrorType.TIMEOUT,
                    f"timed out: installing dependencies took longer than the {timeout_s:g} s limit",
                )
                await stop
        finally:
            stop.cancel()
            if not acquiring.done():
                acquiring.cancel()  # kills uv; the build's staging dir is removed
                await asyncio.gather(acquiring, return_exceptions=True)
            lines.put_nowait(None)
            await relaying
        if acquiring.cancelled() and stop.done() and not stop.cancelled():
            error_type, reason = stop.result()
            return failure(error_type, reason, stdout=run.output.text())
        return acquiring.result()

    def _spec(self, job_id: str, request: FunctionRequest, limits: Limits) -> JobSpec:
        deployed = None
        if request.function_code is None and request.class_code is None:
            deployed = resolve_deployed(self.settings.app_dir, request)  # a Flash app's own code
        # Its own dir per run, not per id: the dir of an earlier job of this id may still be
        # queued for removal (see cleanup.py), which would take this job's with it.
        return JobSpec(
            job_id=job_id,
            request=request,
            python=sys.executable,
            workdir=self.settings.jobs_dir / f"{job_id}.{secrets.token_hex(4)}",
            base_env=self._base_env,
            limits=limits,
            watch_interval_s=self.settings.watch_interval_s,
            notice_interval_s=self.settings.wait_notice_interval_s,
            deployed_module=deployed.module if deployed else None,
            deployed_sys_path=[str(deployed.sys_path)] if deployed else [],
            confinement=self.confinement,
        )

    def _schedule_cleanup(self, workdir: Any) -> None:
        self._workdirs.remove(workdir)  # after the response, off the loop: see cleanup.py
