"""Trying learned preloads: a template that imports them starts beside the running one, off any
job's path, and replaces it only if it came up clean.

A running template never imports anything after it started: a module that hung, crashed or
started a thread would take the env's warm forks down with it, and each job would wait for the
import. So a trial starts a *new* template with the env's preloads plus the candidates (see
``preload_learning.py``); jobs keep forking from the old one meanwhile. The new template is
installed when none of its checks failed (:func:`trial_problem`); otherwise it is stopped and
its candidates are refused, one at a time when several were tried together and the fault cannot
be pinned on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandvisor.supervisor.preload_learning import PreloadLearner, record_path
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.template_process import TemplateLost, TemplateProcess
from sandvisor.supervisor.template_ready import TemplateReady

log = logging.getLogger(__name__)

Starter = Callable[[str, list[str], Mapping[str, str]], Awaitable[TemplateProcess]]
Installer = Callable[[str, TemplateProcess], Awaitable[bool]]


@dataclass(frozen=True)
class PreloadPolicy:
    """How templates learn preloads. ``adaptive``: learn at all; ``store``: the directory the
    learned lists are kept in (None: kept in memory only); ``learn_after``: jobs that must import
    a module before it is tried; ``max_modules``: learned modules per env; ``max_rss_mb``: the
    largest resident set (MiB) a template may grow to by learned preloads."""

    adaptive: bool = True
    store: Path | None = None
    learn_after: int = 2
    max_modules: int = 32
    max_rss_mb: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> PreloadPolicy:
        """The policy ``SANDVISOR_ADAPTIVE_PRELOAD`` and ``SANDVISOR_PRELOAD_*`` describe, its
        lists kept in the store (:attr:`Settings.preloads_dir`)."""
        return cls(
            adaptive=settings.adaptive_preload,
            store=settings.preloads_dir,
            learn_after=settings.preload_learn_after,
            max_modules=settings.preload_max_modules,
            max_rss_mb=settings.preload_max_rss_mb,
        )


def trial_problem(template: TemplateReady, max_rss_mb: int) -> str | None:
    """Why a template that imported candidates must not fork jobs, or None when it may.

    Each check is something a fork cannot carry or a job would pay for: a Python thread (a fork
    copies none), an open GPU device or an initialized CUDA (a forked child cannot use the
    parent's context), a resident set over ``max_rss_mb`` (every job's fork shares it, and a
    template that large crowds the machine).
    """
    if template.cuda_initialized:
        return "it initialized CUDA on import"
    if template.device_open:
        return f"it opened {template.device_open} on import"
    if template.threads:
        return f"it started threads on import ({', '.join(template.threads)})"
    if template.rss_kb > max_rss_mb * 1024:
        return f"the template grew to {template.rss_kb // 1024} MiB (cap {max_rss_mb} MiB)"
    return None


class PreloadTrials:
    """Every env's learner, and the trials of its candidates (at most one running per env)."""

    def __init__(
        self, policy: PreloadPolicy, forced: list[str], start: Starter, install: Installer
    ) -> None:
        self.policy = policy
        self._forced = list(forced)
        self._start = start
        self._install = install
        self._learners: dict[str, PreloadLearner] = {}
        self._queued: dict[str, list[list[str]]] = {}  # key -> batches waiting for a trial
        self._running: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def learner(self, key: str) -> PreloadLearner:
        """The learner of the env whose interpreter is ``key`` (its file read on first use)."""
        learner = self._learners.get(key)
        if learner is None:
            store = self.policy.store if self.policy.adaptive else None
            path = record_path(store, key) if store else None
            learner = PreloadLearner(
                path, self._forced, self.policy.learn_after, self.policy.max_modules
            )
            self._learners[key] = learner
        return learner

    def forget(self, key: str) -> None:
        """``key``'s env was rebuilt or removed: its learner is read again from its record on
        next use (the store deletes the record with the env, so the new env learns afresh)."""
        self._learners.pop(key, None)

    def preloads(self, key: str) -> list[str]:
        """What a template of ``key`` imports when it starts: forced, then learned modules."""
        return self.learner(key).preloads if self.policy.adaptive else list(self._forced)

    def observe(self, key: str, modules: Iterable[str], env: Mapping[str, str]) -> None:
        """One job's imports; a trial starts in the background when a module is due."""
        if not self.policy.adaptive or self._closed:
            return
        batch = self.learner(key).observe(modules)
        if not batch:
            return
        self._queued.setdefault(key, []).append(batch)
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._run(key, dict(env)))

    async def settled(self) -> None:
        """Wait until no trial runs or waits (tests and benchmarks wait for the learning)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop every trial; a template a trial was starting is stopped too."""
        self._closed = True
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for key, batches in self._queued.items():
            for batch in batches:
                self.learner(key).abandon(batch)
        self._queued.clear()

    async def _run(self, key: str, env: Mapping[str, str]) -> None:
        try:
            while self._queued.get(key) and not self._closed:
                batch = self._queued[key].pop(0)
                try:
                    await self._try(key, batch, env)
                except asyncio.CancelledError:
                    self.learner(key).abandon(batch)
                    raise
        finally:
            self._running.pop(key, None)

    async def _try(self, key: str, batch: list[str], env: Mapping[str, str]) -> None:
        learner = self.learner(key)
        try:
            template = await self._start(key, learner.preloads + batch, env)
        except TemplateLost as exc:
            self._refuse(key, batch, f"the template did not start with it ({exc})")
            return
        bad = {
            name: f"its import failed: {why}"
            for name, why in template.ready.preload_failed.items()
            if name in batch
        }
        # A job that imports it itself would show that output or warning; a preload hides it.
        bad |= {n: why for n, why in template.ready.preload_noisy.items() if n in batch}
        problem = trial_problem(template.ready, self.policy.max_rss_mb)
        if bad or problem is not None:
            await template.stop()
            for name, why in bad.items():
                learner.reject([name], why)
            rest = [name for name in batch if name not in bad]
            if rest and bad:  # perhaps not at fault: tried again without the refused ones
                self._queued.setdefault(key, []).append(rest)
            elif rest:
                self._refuse(key, rest, problem or "")
            return
        installed = False
        with contextlib.suppress(TemplateLost):
            installed = await self._install(key, template)
        if installed:
            learner.accept(batch)
            log.info("template %s now preloads %s", key, ", ".join(batch))
        else:
            learner.abandon(batch)
            await template.stop()

    def _refuse(self, key: str, batch: list[str], why: str) -> None:
        """Refuse one candidate; several tried together are tried again one at a time."""
        if len(batch) == 1:
            self.learner(key).reject(batch, why)
        else:
            self._queued.setdefault(key, []).extend([name] for name in batch)
