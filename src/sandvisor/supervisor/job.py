"""One job: its typed spec, its per-request context, and the one-shot run of a function.

    JobSpec     everything decided before the child starts; builds the child's frames
    JobContext  (context.py) one request's stop, events, output, timings and response
    JobRun      a function request: one ChildSession, used once

    launch (fork from the env's template, or spawn) -> frames and output until the exit, or a
      stop (cancel, broken channel, a watchdog breach: the watchdog owns the wall-time limit)
      -> terminate what is left of its process tree -> classify -> respond

The job's GPUs (if any) are held from before launch until the response. User code never runs
here; this module only moves bytes and watches processes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandvisor.protocol.frames import Frame
from sandvisor.protocol.messages import KIND, FrameKind
from sandvisor.protocol.models import ErrorType, FunctionRequest, FunctionResponse
from sandvisor.supervisor.child_frames import (
    MalformedFrame,
    display_of,
    error_fields,
    imported_modules,
    malformed_error,
    result_fields,
)
from sandvisor.supervisor.confinement import Confinement
from sandvisor.supervisor.context import JobContext
from sandvisor.supervisor.envs import EnvLease
from sandvisor.supervisor.gpus import GpuLease, GpuPool, gpu_memory_by_pid
from sandvisor.supervisor.identities import IdentityLease, IdentityPool
from sandvisor.supervisor.limits import CHILD_OOM_SCORE_ADJ, Limits
from sandvisor.supervisor.oom import oom_kill_count
from sandvisor.supervisor.outcome import Report, failure
from sandvisor.supervisor.policy import job_environment
from sandvisor.supervisor.process import ExitInfo
from sandvisor.supervisor.proctree import ProcessTree, job_comm, terminate_tree
from sandvisor.supervisor.session import ChildSession
from sandvisor.supervisor.templates import TemplateLost, TemplatePool, TemplateProcess
from sandvisor.supervisor.warm_spares import gpu_set
from sandvisor.supervisor.watchdog import Watchdog

#: Request fields the child needs; the rest (dependencies, limits, ...) is the supervisor's.
CHILD_REQUEST_FIELDS = frozenset(
    {
        "function_name",
        "function_code",
        "args",
        "kwargs",
        "modules",
        "execution_type",
        "class_name",
        "class_code",
        "constructor_args",
        "constructor_kwargs",
        "method_name",
        "serialization_format",
    }
)


@dataclass
class JobSpec:
    """Everything decided about a job before its child starts; the request stays typed here
    and becomes the child's msgpack dicts only in :meth:`job_frame` and :meth:`call_frame`."""

    job_id: str
    request: FunctionRequest
    python: str
    workdir: Path
    base_env: dict[str, str]  # the worker's, scrubbed (policy.child_environment)
    limits: Limits
    deployed_module: str | None = None
    deployed_sys_path: list[str] = field(default_factory=list)
    display: bool = False
    watch_interval_s: float = 0.1
    notice_interval_s: float = 10.0  # how often a wait before the start is said (heartbeat.py)
    venv: EnvLease | None = None  # the env it runs in, once leased
    gpus: GpuLease | None = None  # its GPUs, once held
    identity: IdentityLease | None = None  # its uid (and private HOME), once held
    confinement: Confinement | None = None  # the user namespace a fresh interpreter starts in

    def environment(self) -> dict[str, str]:
        """The child's whole environment, as :func:`~sandvisor.supervisor.policy.job_environment`
        assembles it from what is decided so far: a new dict each call (keep it, do not ask
        again per key)."""
        home = self.identity.home if self.identity is not None else None
        return job_environment(self.base_env, self.job_id, self.venv, self.gpus, home)

    def identity_fields(self) -> dict[str, Any]:
        """The job frame's ``identity`` (what the child becomes: ``sandbox_child/credentials``),
        or nothing for a job that runs as the supervisor."""
        if self.identity is None:
            return {}
        fields: dict[str, Any] = {"uid": self.identity.uid, "gid": self.identity.gid}
        home = self.identity.home
        if home is not None:
            fields |= {"home": str(home), "tmp": str(home / "tmp"), "site": str(home / "site")}
        return {"identity": fields}

    def job_frame(self, env_base: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The child's job frame; with ``env_base`` (the environment a forked child starts
        with, its template's) the environment goes as the changes from it, not whole."""
        env = self.environment()
        frame = {
            KIND: FrameKind.JOB,
            "job_id": self.job_id,
            "comm": job_comm(self.job_id),
            "request": self.request.model_dump(include=set(CHILD_REQUEST_FIELDS)),
            "module": self.deployed_module,
            "sys_path": self.deployed_sys_path,
            "workdir": str(self.workdir),
            "env": env,
            "rlimits": {
                name: list(pair)
                for name, pair in self.limits.rlimits(self.identity is not None).items()
            },
            "max_result_bytes": self.limits.max_result_bytes,
            "oom_score_adj": CHILD_OOM_SCORE_ADJ,
            "display": self.display,
        } | self.identity_fields()
        if env_base is not None:
            del frame["env"]
            frame["env_set"] = {k: v for k, v in env.items() if env_base.get(k) != v}
            frame["env_unset"] = [k for k in env_base if k not in env]
        return frame

    def call_frame(self, seq: int, max_result_bytes: int) -> dict[str, Any]:
        """The frame of this request's method call on a live instance (an actor's ``call``)."""
        request = self.request
        return {
            KIND: FrameKind.CALL,
            "seq": seq,
            "method_name": request.method_name,
            "args": request.args,
            "kwargs": request.kwargs,
            "serialization_format": request.serialization_format,
            "max_result_bytes": max_result_bytes,
            "display": self.display,
        }


class JobRun:
    """A function request's one-shot run: one child session, from launch to response."""

    def __init__(
        self,
        context: JobContext,
        templates: TemplatePool | None,
        gpus: GpuPool | None = None,
        identities: IdentityPool | None = None,
    ) -> None:
        self.context = context
        self.spec = context.spec
        self._templates = templates
        self._gpus = gpus
        self._gpu_lease: GpuLease | None = None
        self._forked_from: TemplateProcess | None = None  # the template of its last attempt
        self._identities = identities
        self._left_nothing = False  # the last attempt's job certainly left no process behind
        self._imports_seen = False  # the attempt's job sent its one counted import report
        self._report = Report()  # what the current attempt's child reported
        self.watchdog: Watchdog | None = None

    async def execute(self) -> FunctionResponse:
        """Run the job to its end and answer; a lost template means one more try on a spawn."""
        waited = await self._hold_gpus()
        if waited is not None:
            return waited
        try:
            waited = await self._hold_identity()
            if waited is not None:
                return waited
            report = await self._attempts()
        finally:
            if self.spec.identity is not None:  # its processes are gone: the uid may go back
                self.spec.identity.release(empty=self._left_nothing)
            if self._gpu_lease is not None:
                self._gpu_lease.release()
        await self._warm_next()
        return self.context.respond(report)

    async def _attempts(self) -> Report:
        oom_kills = oom_kill_count()
        try:
            report = await self._attempt(self._templates)
        except TemplateLost as exc:  # it died after the fork, before the job answered
            await self._fall_back(exc)
            report = await self._attempt(None)
        # Only a SIGKILL can be the OOM killer's: other jobs skip the second read.
        if (
            oom_kills is not None
            and report.exit is not None
            and report.exit.signal == signal.SIGKILL
        ):
            report.oom_kills = (oom_kill_count() or oom_kills) - oom_kills
        return report

    async def _hold_identity(self) -> FunctionResponse | None:
        """Hold a job identity when jobs run as ones; a failure response if stopped meanwhile."""
        if self._identities is None:
            return None
        lease = await self.context.hold_identity(self._identities)
        if lease is None:
            return self._stopped_waiting()
        self.spec.identity = lease
        return None

    def _stopped_waiting(self) -> FunctionResponse:
        """The answer for a job stopped while it waited for GPUs or an identity."""
        error_type, reason = self.context.stop_reason or (ErrorType.CANCELLED, "cancelled")
        return failure(error_type, reason, stdout=self.context.output.text())

    async def _warm_next(self) -> None:
        """The job's GPUs are free again: its template may warm a spare for the next job on
        them (see warm_spares.py)."""
        lease, template = self._gpu_lease, self._forked_from
        if lease is None or not lease.gpus or template is None or self._templates is None:
            return
        still_free = self._gpus is not None and self._gpus.all_free(lease.indices)
        await self._templates.warm_spares.released(template, gpu_set(lease.indices), still_free)

    async def _fall_back(self, exc: TemplateLost) -> None:
        self.context.retried = True
        await self.context.say(
            f"template lost ({exc}); running the job again on a fresh interpreter"
        )

    async def _hold_gpus(self) -> FunctionResponse | None:
        """Wait for the job's GPUs (in arrival order); a failure response if stopped meanwhile."""
        limits = self.spec.limits
        if self._gpus is None or not self._gpus.total:
            return None
        self._gpu_lease = await self.context.hold_gpus(self._gpus, limits.gpus, "other jobs")
        if self._gpu_lease is None:
            return self._stopped_waiting()
        # Exactly the leased GPUs, none (an empty list hides them all) when it asked for none.
        self.spec.gpus = self._gpu_lease
        return None

    # -- one attempt ---------------------------------------------------------------------------

    async def _attempt(self, templates: TemplatePool | None) -> Report:
        self._report = Report()
        self._imports_seen = False
        self._left_nothing = False
        session = ChildSession(
            self.spec,
            templates,
            {
                FrameKind.RUNNING: self._running,
                FrameKind.RESULT: self._result,
                FrameKind.ERROR: self._error,
                FrameKind.IMPORTS: self._imports,
                FrameKind.EXITING: self._exiting,
            },
            self.context,
            max_result_bytes=self.spec.limits.max_result_bytes,
            on_channel_end=self._channel_ended,
            on_fallback=self._fall_back,
        )
        try:
            await session.start()
            self._forked_from = session.template
            self.context.timings.launched = session.launched_at
            return await self._supervise(session)
        except BaseException:
            await asyncio.shield(self._abort(session))
            raise
        finally:
            await session.close()

    async def _supervise(self, session: ChildSession) -> Report:
        report = self._report
        watching = self._start_watchdog(session)
        try:
            report.exit = await self._wait_or_stop(session)
            await self._end_leftovers(session)  # whatever the job left behind goes with it
            if not await session.settle(frames=True):
                await self.context.say(
                    "output pipes still open after the job ended; stopped reading them"
                )
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            report.limits = self.spec.limits
            if self.watchdog is not None:
                report.peak_rss_bytes = self.watchdog.record.peak_rss_bytes
        timings = self.context.timings
        timings.finished = time.monotonic()
        report.elapsed_s = timings.finished - timings.started
        return report

    async def _wait_or_stop(self, session: ChildSession) -> ExitInfo | None:
        assert session.exited is not None
        await self.context.exit_or_stop(session.exited)
        if not session.exited.done():  # stopped: by a cancel, a broken channel or the watchdog
            self._report.stopped = self.context.stop_reason
            await session.terminate(self.spec.limits.grace_s)
        try:
            return await session.exit_info()
        except TemplateLost:
            if self._report.fields is None and self._report.error is None:
                raise  # it never answered: the caller runs it again on a fresh spawn
            return None  # it had answered before its template died; how it ended is unknown

    async def _abort(self, session: ChildSession) -> None:
        """The attempt failed or was cancelled: nothing of the job may outlive it."""
        ended = session.exited is not None and session.exited.done()
        await session.terminate(self.spec.limits.grace_s)
        if ended:
            await self._end_leftovers(session)

    async def _end_leftovers(self, session: ChildSession) -> None:
        """Kill what the job left running after its own process ended (detached ones too)."""
        template, pid = session.template, session.pid
        # Reaped by its template: an empty group and no stray child of the template mean nothing
        # is left, and a scan of /proc (which costs more than a short job) would find nothing.
        if template is not None and pid is not None and template.job_left_nothing(pid):
            self._left_nothing = True
            return
        if session.tree is not None:
            await terminate_tree(session.tree, 0.0)
        if template is not None:
            # Orphans that bear no mark of the job (renamed, given an environment of their own)
            # are still the template's strays, and with no other job on it, leftovers.
            for stray in template.leftovers():
                tree = ProcessTree(self.spec.job_id, stray, (template.pid,))
                await terminate_tree(tree, 0.0)

    def _start_watchdog(self, session: ChildSession) -> asyncio.Future[None]:
        lease = self._gpu_lease
        gpu_memory = gpu_memory_by_pid if lease is not None and lease.gpus else None
        self.watchdog = session.watchdog(self.spec.limits, session.launched_at, gpu_memory)
        return asyncio.ensure_future(self._watch(self.watchdog))

    async def _watch(self, watchdog: Watchdog) -> None:
        # The watchdog's first sample is one interval in (see Watchdog.run): a job that ends
        # sooner is never sampled, since a scan of /proc costs more than such a job.
        breach = await watchdog.run()
        self.context.stop(breach.error_type, breach.reason)

    # -- frames (the session's dispatch table) -------------------------------------------------

    async def _running(self, frame: Frame) -> None:
        self.context.timings.running = time.monotonic()

    # Every frame is the job's word (it can write to its channel): each is checked
    # (child_frames.py), the first answer counts, and one malformed is the job's own error.

    async def _result(self, frame: Frame) -> None:
        report = self._report
        if report.fields is not None or report.error is not None:
            return
        try:
            report.fields = result_fields(frame, self.spec.limits.max_result_bytes)
        except MalformedFrame as exc:
            report.error = malformed_error("result", str(exc))
            return
        report.display = display_of(frame)

    async def _error(self, frame: Frame) -> None:
        report = self._report
        if report.fields is not None or report.error is not None:
            return
        try:
            report.error = dict(error_fields(frame))
        except MalformedFrame as exc:
            report.error = malformed_error("error", str(exc))

    async def _exiting(self, frame: Frame) -> None:
        self._report.exit_announced = True

    async def _imports(self, frame: Frame) -> None:
        # What the job imported that its template had not: the template may learn to preload it.
        # One report a job, of names that can be modules.
        if self._templates is not None and not self._imports_seen:
            self._imports_seen = True
            self._templates.observe(self.spec.python, imported_modules(frame))

    async def _channel_ended(self, broken: Exception | None) -> None:
        report = self._report
        if broken is None:
            return
        report.channel_error = str(broken)
        if report.fields is None and report.error is None:
            self.context.stop(
                ErrorType.LOST, f"lost: the job broke its protocol channel ({broken})"
            )
