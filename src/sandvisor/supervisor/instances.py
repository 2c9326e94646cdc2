"""Class instances that persist across requests, each in its own actor process.

    class request -> instance id (the request's, or ``ClassName_<8 hex>``)
      -> live instance with that id and create_new_instance false: queue on it
      -> otherwise: a new instance (recreated, and said so, when the caller expected one)
      -> one call at a time per instance, in arrival order -> response with instance_info

runpod-flash semantics, as worker-flash implements them: ``create_new_instance`` true always
makes a new instance (replacing a live one of the same id once its queued calls are done);
false reuses the live instance of that id, or creates it when there is none here. A caller that
asked for an existing instance and gets a new one (evicted, crashed, timed out, or it lived on
another worker) is told: ``instance_info["recreated"]`` is true and the output says why.

Bounded, unlike worker-flash's dict: at most ``max_instances`` live, the least recently used idle
one stopped first when a new one comes; an idle one stops after ``instance_ttl_s``. Only idle
instances are stopped, so a burst of calls to more instances than the bound can hold goes over it
for as long as they all have calls in flight; the count comes back down as they finish.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import uuid

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.actor_process import ActorProcess, Exchange
from sandvisor.supervisor.context import JobContext
from sandvisor.supervisor.envs import EnvLease, EnvStore
from sandvisor.supervisor.gpus import GpuPool, gpu_memory_by_pid
from sandvisor.supervisor.identities import IdentityPool
from sandvisor.supervisor.instance import Instance, new_instance_id, now_iso, refused
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.outcome import Report
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.templates import TemplatePool

log = logging.getLogger(__name__)

#: Ids of instances that are gone, kept to say why when a caller asks for one again.
GONE_MEMORY = 4096
NOT_HERE = "is not on this worker (new here, or it lived on another one)"


class InstanceRegistry:
    """The live instances of one Supervisor; ``call`` from any number of tasks."""

    def __init__(
        self,
        settings: Settings,
        templates: TemplatePool | None,
        envs: EnvStore | None,
        gpus: GpuPool | None = None,
        identities: IdentityPool | None = None,
    ) -> None:
        self._settings = settings
        self._identities = identities
        self._templates = templates
        self._envs = envs
        self._gpus = gpus
        self._live: collections.OrderedDict[str, Instance] = collections.OrderedDict()
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._stopping: set[asyncio.Task[None]] = set()
        self._all: set[Instance] = set()  # live and retiring: everything that has a process
        self._reaper: asyncio.Task[None] | None = None

    # -- public --------------------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle())

    async def close(self) -> None:
        """Stop every actor (the Supervisor has already stopped the calls in flight)."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for instance in list(self._all):
            self._retire(instance, "was stopped when the supervisor shut down")
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    @property
    def live(self) -> dict[str, int | None]:
        """Instance id -> actor pid, for status and tests."""
        return {key: instance.actor.pid for key, instance in self._live.items()}

    async def call(self, run: JobContext, limits: Limits, lease: EnvLease) -> FunctionResponse:
        """Run the request's method on its instance, creating the instance when needed.

        ``lease``: the request's env, leased by the core; a new instance takes a lease of its
        own on that env for its actor's life.
        """
        request = run.spec.request
        class_name = str(request.class_name)
        asked_id = request.instance_id
        instance_id = asked_id or new_instance_id(class_name)
        instance = self._live.get(instance_id)
        if instance is not None and request.create_new_instance:
            self._retire(instance, "was replaced by a request with create_new_instance")
            instance = None
        expected = bool(asked_id) and not request.create_new_instance
        while True:
            why_new = None
            if instance is None:
                why_new = self._gone.get(instance_id, NOT_HERE) if expected else ""
                instance = self._add(instance_id, class_name, run, limits, lease)
            instance.pending += 1
            self._live.move_to_end(instance_id)
            self._trim()
            try:
                stopped = await instance.turn(run)
                if stopped is not None:
                    return self._not_run(run, instance, stopped)
                try:
                    if instance.gone is None:
                        return await self._run_call(instance, run, limits, why_new)
                finally:
                    instance.lock.release()
            finally:
                instance.pending -= 1
                self._after_call(instance)
            # It went while this call waited its turn: the call goes to a new one.
            expected = True
            instance = self._live.get(instance_id)

    # -- one call ------------------------------------------------------------------------------

    @staticmethod
    def _not_run(
        run: JobContext, instance: Instance, stopped: tuple[ErrorType, str]
    ) -> FunctionResponse:
        response = run.respond(Report(stopped=stopped))
        info = instance.info({}, recreated=False)
        return response.model_copy(
            update={"instance_id": instance.instance_id, "instance_info": info}
        )

    async def _run_call(
        self, instance: Instance, run: JobContext, limits: Limits, why_new: str | None
    ) -> FunctionResponse:
        started = time.monotonic()
        run.timings.launched = started
        recreated = bool(why_new)
        actor_limits = self._actor_limits(instance, limits)
        creating = not instance.started
        try:
            if creating:
                instance.started = True
                stopped = await self._hold_gpus(instance, run, limits)
                if stopped is None:
                    stopped = await self._hold_identity(instance, run)
                if stopped is not None:
                    self._drop(instance)
                    return run.respond(Report(stopped=stopped))
                await self._say_created(run, instance, why_new)
                exchange = await instance.actor.start(run, actor_limits, started, run.stopped)
                run.retried = instance.actor.retried_on_spawn
                if exchange.answer != "created":  # it raised, died or was stopped: never was
                    return self._not_created(run, instance, exchange)
            exchange = await instance.actor.call(run.spec, run, actor_limits, started, run.stopped)
        except BaseException as exc:  # cancelled mid-call, or the actor could not start
            self._lose(instance, f"its call was interrupted ({type(exc).__name__})")
            raise
        if creating and refused(exchange):
            # The request that made it is invalid (no such method, arguments that cannot be
            # decoded): nothing of it is kept, as if the child had found out before creating.
            return self._not_created(run, instance, exchange)
        instance.method_calls += 1
        return await self._respond(run, instance, exchange, recreated)

    def _not_created(
        self, run: JobContext, instance: Instance, exchange: Exchange
    ) -> FunctionResponse:
        """The answer for a request whose instance never came to be: no instance id, no info."""
        self._drop(instance)
        self._note_times(run, instance, exchange)
        return run.respond(exchange.report)

    def _drop(self, instance: Instance) -> None:
        """An instance that never came to be goes without a trace: not remembered as gone (a
        later request for its id is not told it was lost); its actor, if any, stops once no
        call waits on it."""
        if instance.gone is None:
            instance.gone = "its creation failed"
        if self._live.get(instance.instance_id) is instance:
            del self._live[instance.instance_id]

    async def _hold_gpus(
        self, instance: Instance, run: JobContext, limits: Limits
    ) -> tuple[ErrorType, str] | None:
        """GPUs for the actor's life, waited for in turn; the stop reason if stopped meanwhile.

        Idle instances holding GPUs are stopped, least recently used first, to make room.
        """
        pool = self._gpus
        if pool is None or not pool.total:
            return None
        lease = await run.hold_gpus(pool, limits.gpus, "jobs or instances", self._free_gpus)
        if lease is None:
            return run.stop_reason or (ErrorType.CANCELLED, "cancelled while waiting for GPUs")
        instance.gpu_lease = lease
        instance.actor.spec.gpus = lease
        if lease.gpus:
            instance.actor.gpu_memory = gpu_memory_by_pid
        return None

    async def _hold_identity(
        self, instance: Instance, run: JobContext
    ) -> tuple[ErrorType, str] | None:
        """A job identity for the actor's life (when jobs run as ones); the stop reason if
        stopped while waiting for one."""
        if self._identities is None:
            return None
        lease = await run.hold_identity(self._identities)
        if lease is None:
            return run.stop_reason or (ErrorType.CANCELLED, "cancelled: no job identity")
        instance.actor.spec.identity = lease
        return None

    def _free_gpus(self, wanted: int) -> None:
        """Stop idle instances that hold GPUs (least recently used first) until ``wanted`` free."""
        if self._gpus is None:
            return
        freeing = self._gpus.free
        for instance in list(self._live.values()):
            if freeing >= wanted:
                return
            held = instance.gpu_lease.gpus if instance.gpu_lease is not None else ()
            if held and instance.pending == 0:
                self._retire(instance, "was stopped to free its GPU(s) for another job")
                freeing += len(held)

    async def _say_created(self, run: JobContext, instance: Instance, why_new: str | None) -> None:
        key = instance.instance_id
        if why_new:
            await run.say(
                f"instance {key} {why_new}; recreating it from this request's constructor arguments"
            )
        else:
            await run.say(f"creating instance {key} of class {instance.class_name}")

    def _actor_limits(self, instance: Instance, call: Limits) -> Limits:
        """The call's own wall time and sizes; the actor's memory, processes and CPU time."""
        return dataclasses.replace(
            call,
            memory_bytes=instance.limits.memory_bytes,
            max_procs=instance.limits.max_procs,
            cpu_s=instance.limits.cpu_s,
        )

    @staticmethod
    def _note_times(run: JobContext, instance: Instance, exchange: Exchange) -> None:
        run.timings.running = exchange.running_at
        run.timings.finished = time.monotonic()
        instance.last_used = now_iso()
        instance.last_used_at = time.monotonic()

    async def _respond(
        self, run: JobContext, instance: Instance, exchange: Exchange, recreated: bool
    ) -> FunctionResponse:
        self._note_times(run, instance, exchange)
        lost_now = exchange.answer is None or (instance.gone is None and not instance.actor.alive)
        if lost_now:
            self._lose(instance, self._death_words(exchange.report, instance.actor.death))
            await run.say(f"instance {instance.instance_id} is gone: {instance.gone}")
        response = run.respond(exchange.report)
        if lost_now and response.error:
            summary, sep, rest = response.error.partition("\n")
            response.error = f"{summary}; instance {instance.instance_id} is gone{sep}{rest}"
        return response.model_copy(
            update={
                "instance_id": instance.instance_id,
                "instance_info": instance.info(exchange.info, recreated),
            }
        )

    @staticmethod
    def _death_words(report: Report, death: str | None) -> str:
        if report.stopped is not None:
            return f"its actor was stopped ({report.stopped[1]})"
        return death or "its actor ended"

    # -- bookkeeping ---------------------------------------------------------------------------

    def _add(
        self, instance_id: str, class_name: str, run: JobContext, limits: Limits, lease: EnvLease
    ) -> Instance:
        actor_job = "i" + uuid.uuid4().hex[:15]
        spec = dataclasses.replace(
            run.spec,
            job_id=actor_job,
            workdir=self._settings.jobs_dir / actor_job,
            limits=limits,
            display=False,
        )
        actor = ActorProcess(
            spec,
            self._templates,
            max_result_bytes=self._settings.max_result_bytes,
            on_exit=self._on_actor_exit,
        )
        # A lease of its own on the env, so that GC leaves it alone while the actor lives.
        own_lease = self._envs.lease_again(lease) if self._envs is not None else None
        instance = Instance(instance_id, class_name, actor, limits, own_lease)
        self._live[instance_id] = instance
        self._all.add(instance)
        self._gone.pop(instance_id, None)
        return instance

    def _trim(self) -> None:
        """Over the bound: stop least recently used idle instances."""
        excess = len(self._live) - max(1, self._settings.max_instances)
        for instance in list(self._live.values()):
            if excess <= 0:
                return
            if instance.pending == 0:
                limit = self._settings.max_instances
                self._retire(instance, f"was evicted (least recently used of at most {limit})")
                excess -= 1

    def _after_call(self, instance: Instance) -> None:
        if instance.pending == 0 and (instance.retired or instance.gone is not None):
            self._stop(instance)
        else:
            self._trim()

    def _retire(self, instance: Instance, reason: str) -> None:
        """No new calls; stopped once its queued calls are done."""
        instance.retired = True
        self._forget(instance, reason)
        if instance.pending == 0:
            self._stop(instance)

    def _lose(self, instance: Instance, reason: str) -> None:
        """Its actor is dead or unusable: queued calls go to a new instance."""
        if instance.gone is None:
            instance.gone = reason
        self._forget(instance, f"was lost ({reason})")

    def _forget(self, instance: Instance, reason: str) -> None:
        if self._live.get(instance.instance_id) is instance:
            del self._live[instance.instance_id]
            self._gone[instance.instance_id] = reason
            while len(self._gone) > GONE_MEMORY:
                self._gone.popitem(last=False)

    def _stop(self, instance: Instance) -> None:
        if instance not in self._all:
            return
        self._all.discard(instance)
        task = asyncio.ensure_future(self._stop_now(instance))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_now(self, instance: Instance) -> None:
        try:
            await instance.actor.stop(self._settings.grace_s)
        except Exception:  # a bug of ours in stopping one actor must not stop the others
            log.exception("stopping instance %s failed", instance.instance_id)
        finally:
            if instance.lease is not None:
                instance.lease.release()
            if instance.gpu_lease is not None:  # only once its process is gone
                instance.gpu_lease.release()
            if instance.actor.spec.identity is not None:  # the pool checks it is empty
                instance.actor.spec.identity.release()

    def _on_actor_exit(self, actor: ActorProcess) -> None:
        """An idle actor died (a background thread crashed it, or it was killed from outside)."""
        for instance in list(self._all):
            if instance.actor is actor and instance.pending == 0 and instance.gone is None:
                self._lose(instance, f"its actor died while idle: {actor.death}")
                self._stop(instance)

    async def _reap_idle(self) -> None:
        ttl = self._settings.instance_ttl_s
        interval = min(max(ttl / 4, 0.05), 30.0)
        if self._gpus is not None and self._gpus.total:
            interval = min(interval, 0.5)  # a job waiting for a GPU an idle instance holds
        while True:
            await asyncio.sleep(interval)
            if self._gpus is not None and self._gpus.waiting:
                self._free_gpus(self._gpus.free + 1)
            now = time.monotonic()
            for instance in list(self._live.values()):
                if instance.pending == 0 and now - instance.last_used_at > ttl:
                    self._retire(instance, f"was stopped after {ttl:g} s idle (TTL)")
