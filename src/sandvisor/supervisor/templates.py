"""Warm template interpreters, one per environment, that fork a fresh child per job.

One template is :class:`~sandvisor.supervisor.template_process.TemplateProcess` (re-exported
here with :class:`TemplateLost` and :class:`ForkedChild`, where callers import them from).

Lifecycle (:class:`TemplatePool`): the supervisor starts the base template when it starts; the
template of any other env starts on the first job there, keyed by the interpreter path. At most
``limit`` run at once: the least recently used one with no job in flight stops first. A template
that dies is replaced on its next use; a job it was forking, or whose child it was watching, sees
:class:`TemplateLost`, and the caller runs that job again on a fresh spawn.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from sandvisor.supervisor.confinement import Confinement
from sandvisor.supervisor.gpus import free_memory_mb
from sandvisor.supervisor.preload_trials import PreloadPolicy, PreloadTrials
from sandvisor.supervisor.process import JobPipes, interpreter_identity
from sandvisor.supervisor.template_process import ForkedChild, TemplateLost, TemplateProcess
from sandvisor.supervisor.warm_spares import WarmPolicy, WarmSpares

__all__ = ["ForkedChild", "TemplateLost", "TemplatePool", "TemplateProcess"]

log = logging.getLogger(__name__)

#: After a template fails to start, jobs of its env spawn fresh interpreters this long before the
#: next try: a preload that crashes or hangs costs each job a fresh start, not a failed one.
START_BACKOFF_S = 30.0


class TemplatePool:
    """At most ``limit`` templates, keyed by interpreter; the least recently used stops first."""

    def __init__(
        self,
        limit: int,
        preload: list[str],
        env: Mapping[str, str],
        policy: PreloadPolicy | None = None,
        warm: WarmPolicy | None = None,
        confinement: Confinement | None = None,
    ) -> None:
        """``preload``: modules every template imports (``SANDVISOR_PRELOAD``); ``env``: the
        environment of a template started without one given; ``policy``: how templates learn
        more preloads from their jobs (default: learned, kept in memory only); ``warm``: which
        CUDA-warm spares templates keep for GPU jobs (default: none); ``confinement``: the
        user namespace templates start in (confinement.py; default: none, as the supervisor)."""
        self._launch = functools.partial(TemplateProcess.start, confinement=confinement)
        self._limit = max(1, limit)
        self._env = dict(env)
        self._envs: dict[str, dict[str, str]] = {}  # key -> the env its template started with
        self.warm_spares = WarmSpares(warm or WarmPolicy(enabled=False), free_memory_mb)
        self.trials = PreloadTrials(policy or PreloadPolicy(), preload, self._launch, self._install)
        self._templates: dict[str, TemplateProcess] = {}
        self._starting: dict[str, asyncio.Task[TemplateProcess]] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # key -> (when, why) of a failed start
        self._retired: list[TemplateProcess] = []  # stale, stopped once their jobs are done
        self.started = 0  # templates started over the pool's life; tests and benchmarks read it

    @property
    def running(self) -> dict[str, TemplateProcess]:
        """Live templates by interpreter path."""
        return {key: t for key, t in self._templates.items() if t.alive}

    @property
    def learning(self) -> bool:
        """Whether templates learn preloads: then a forked job reports what it imported."""
        return self.trials.policy.adaptive

    def warm(self, python: Path | str) -> bool:
        """Whether ``python``'s template is running now (a fork from it waits for nothing)."""
        template = self._templates.get(str(python))
        return template is not None and template.alive

    async def fork(
        self, python: Path | str, pipes: JobPipes, env: Mapping[str, str] | None = None
    ) -> ForkedChild:
        """Fork a job child from ``python``'s template, starting (or restarting) it if needed.

        ``env`` is the environment a template started here gets (a job's, less its marks); an
        already running template keeps its own. Raises :class:`TemplateLost`.
        """
        return await (await self.ready(python, env)).fork(pipes)

    async def ready(
        self, python: Path | str, env: Mapping[str, str] | None = None
    ) -> TemplateProcess:
        """``python``'s running template, started (or restarted) if needed."""
        template = await self.get(python, env)
        if not template.alive:  # stopped (over the limit) while we waited: one more try
            template = await self.get(python, env)
        return template

    async def get(
        self, python: Path | str, env: Mapping[str, str] | None = None
    ) -> TemplateProcess:
        key = str(python)
        await self._stop_idle_retired()
        template = self._templates.get(key)
        if template is not None and template.interpreter != interpreter_identity(key):
            log.info("the env of %s was rebuilt or removed; retiring its template", key)
            self._retired.append(self._templates.pop(key))
            self.trials.forget(key)
            await self._stop_idle_retired()
            template = None
        if template is not None and template.alive:
            template.last_used = time.monotonic()
            return template
        if template is not None:
            log.info("template for %s died; starting a new one", key)
            self._templates.pop(key)
            await template.stop()
        self._check_backoff(key)
        if key not in self._starting:
            self._starting[key] = asyncio.create_task(self._start(key, env or self._env))
        starting = self._starting[key]
        try:
            return await asyncio.shield(starting)
        finally:
            if starting.done() and self._starting.get(key) is starting:
                del self._starting[key]

    async def _stop_idle_retired(self) -> None:
        if not self._retired:
            return
        idle = [template for template in self._retired if not template.busy]
        self._retired = [template for template in self._retired if template.busy]
        await asyncio.gather(*(template.stop() for template in idle), return_exceptions=True)

    def _check_backoff(self, key: str) -> None:
        failed = self._failed.get(key)
        if failed is None:
            return
        when, why = failed
        ago = time.monotonic() - when
        if ago < START_BACKOFF_S:
            raise TemplateLost(
                f"its template failed to start {ago:.0f} s ago ({why}); jobs there start fresh "
                f"interpreters until {START_BACKOFF_S:g} s have passed"
            )
        del self._failed[key]

    def observe(self, python: Path | str, modules: Iterable[str]) -> None:
        """What a job forked from ``python``'s template imported that the template had not:
        counted, and learned in the background (see :class:`PreloadTrials`)."""
        key = str(python)
        self.trials.observe(key, modules, self._envs.get(key, self._env))

    async def _install(self, key: str, template: TemplateProcess) -> bool:
        """Make ``template`` (a trial's, with more preloads) the one ``key``'s jobs fork from;
        the one it replaces stops once its jobs are done. False when the pool has moved on (a
        start in flight, or the env rebuilt): the caller stops it."""
        if key in self._starting or template.interpreter != interpreter_identity(key):
            return False
        current = self._templates.get(key)
        self._templates[key] = template
        if current is not None:
            self._retired.append(current)
            await self._stop_idle_retired()
        return True

    async def _start(self, key: str, env: Mapping[str, str]) -> TemplateProcess:
        self._envs[key] = dict(env)
        preloads = self.trials.preloads(key)
        try:
            template = await self._launch(key, preloads, env)
        except TemplateLost as exc:
            learned = self.trials.learner(key).learned
            if not learned:
                self._failed[key] = (time.monotonic(), str(exc))
                raise
            # It started with them before; not now (the env was rebuilt with other versions,
            # say). Without them, and they are not tried again if that start succeeds.
            template = await self._start_without_learned(key, env, exc)
        self.started += 1
        self._templates[key] = template
        await self._evict_over_limit()
        return template

    async def _start_without_learned(
        self, key: str, env: Mapping[str, str], first: TemplateLost
    ) -> TemplateProcess:
        learner = self.trials.learner(key)
        try:
            template = await self._launch(key, list(learner.forced), env)
        except TemplateLost as exc:
            self._failed[key] = (time.monotonic(), str(exc))
            raise
        learner.reject(list(learner.learned), f"the template did not start with it ({first})")
        return template

    async def _evict_over_limit(self) -> None:
        while len(self._templates) > self._limit:
            idle = [name for name, template in self._templates.items() if not template.busy]
            if not idle:
                return  # every template has jobs in flight; trim on a later start
            oldest = min(idle, key=lambda name: self._templates[name].last_used)
            log.info("stopping least recently used template %s", oldest)
            await self._templates.pop(oldest).stop()

    async def close(self) -> None:
        await self.warm_spares.close()
        await self.trials.close()
        retired, self._retired = self._retired, []
        await asyncio.gather(*(template.stop() for template in retired), return_exceptions=True)
        for task in self._starting.values():
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        templates, self._templates = list(self._templates.values()), {}
        await asyncio.gather(*(template.stop() for template in templates), return_exceptions=True)
