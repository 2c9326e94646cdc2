"""Which templates keep a CUDA-warm spare, for which GPU sets, and what GPU memory each holds.

A job that gets GPUs spends most of its first CUDA call creating a context; a spare warmed for
its GPU set ahead of it (``sandbox_child/cuda_warm.py``) has done that while no job waited. The
rules, so that warm spares never cost a job what they save another:

- at most one warm spare per GPU set, and only for GPUs no job or instance holds: a job or an
  instance's actor about to run on GPUs takes the warm spare of exactly its set from its own
  template, and every other warm spare on any of those GPUs is dropped first (its context holds
  GPU memory the job may need); one started on a fresh interpreter (no template) drops them all;
- a spare is warmed where the last job on that set ran (its env's template), once the job has
  released the GPUs and they are still free, and when each GPU of the set has at least
  ``min_free_mb`` MiB free (NVML, counting what a spare already warm for that set holds);
- a warm spare is kept while that stays true: it is dropped as soon as a GPU of its set has less
  than ``min_free_mb`` free *not counting the spare's own hold* (free now + held). One rule
  decides warming and keeping. It is checked at each take and release, and every
  ``check_interval_s`` while any warm spare exists (a sweep the pool runs; 0: no sweep). Where
  NVML does not answer, nothing is dropped for memory (nor refused);
- a job never gets a spare warmed for other GPUs (the template looks the set up exactly);
- a set whose warm-ups keep failing (the driver refuses) is not warmed again by that template.

Accounting: just before a warm-up the pool reads each GPU's free memory (NVML); once warm, the
spare reports each device's free and total memory from its own driver (``cuMemGetInfo_v2``), and
the difference is the spare's hold, per GPU, in MiB (:class:`WarmSpare`). Operators see it in an
info log line per warmed spare and in :meth:`WarmSpares.describe`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.template_process import TemplateLost, TemplateProcess

log = logging.getLogger(__name__)

#: Warm-ups of one set that may fail in a template before it stops warming that set.
MAX_WARM_FAILURES = 3

#: GPU indices -> free memory in MiB of those that answered (NVML); may raise.
FreeMemory = Callable[[Iterable[int]], Mapping[int, int]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class WarmPolicy:
    """``enabled``: keep warm spares at all (``SANDVISOR_CUDA_WARM_SPARES``); ``library``: the
    CUDA driver library; ``warmup``: a framework to warm on top of the driver ("torch") or "";
    ``min_free_mb``: warm, and keep, a spare only while each GPU of its set has this much memory
    free not counting the spare (where NVML answers); ``check_interval_s``: seconds between two
    sweeps that apply that rule while a warm spare exists (0: none)."""

    enabled: bool = True
    library: str = "libcuda.so.1"
    warmup: str = ""
    min_free_mb: int = 4096
    check_interval_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WarmPolicy:
        """The policy ``SANDVISOR_CUDA_*`` describe; off on a worker without GPUs."""
        return cls(
            enabled=settings.cuda_warm_spares,
            library=settings.cuda_driver_library,
            warmup=settings.cuda_warmup,
            min_free_mb=settings.cuda_warm_min_free_mb,
            check_interval_s=settings.cuda_warm_check_interval_s,
        )


def gpu_set(indices: Iterable[int]) -> str:
    """The key of a GPU set, as CUDA_VISIBLE_DEVICES names it: ``"0"``, ``"1,3"``."""
    return ",".join(str(index) for index in sorted(indices))


def _indices(key: str) -> list[int]:
    return sorted(int(part) for part in key.split(",") if part)


@dataclass
class WarmSpare:
    """One warm spare as the pool accounts it; all figures in MiB, by GPU index.

    ``free_before_mb``: NVML's free memory just before the warm-up (plus what a spare it
    replaced held); ``device_mb``: ``(free, total)`` the spare's driver reported once warm;
    ``held_mb``: the spare's hold, ``free_before - free after`` (at least 0), for each GPU
    where both are known. ``announced``: the template said it is warm (before that, ``held_mb``
    and ``device_mb`` are empty)."""

    gpus: str
    template: TemplateProcess
    free_before_mb: dict[int, int]
    device_mb: dict[int, tuple[int, int]] = field(default_factory=dict)
    held_mb: dict[int, int] = field(default_factory=dict)
    announced: bool = False

    @property
    def gone(self) -> bool:
        """Its template is gone, or it died after it was announced (WARM_LOST)."""
        alive = self.template.alive
        return not alive or (self.announced and self.gpus not in self.template.warm_spares)

    def describe(self) -> str:
        """One line for an operator: set, template, pid, hold per GPU."""
        pid = self.template.warm_spares.get(self.gpus)
        if not self.announced:
            return f"GPU(s) {self.gpus}: warming in template {self.template.python}"
        return (
            f"GPU(s) {self.gpus}: pid {pid} of template {self.template.python}, holding "
            f"{_per_gpu(self.held_mb, _indices(self.gpus))}"
        )


def _per_gpu(figures: Mapping[int, int], indices: Iterable[int]) -> str:
    return ", ".join(
        f"GPU {index}: {figures[index]} MiB" if index in figures else f"GPU {index}: unknown"
        for index in indices
    )


class WarmSpares:
    """Keeps the rules above across every template of a pool."""

    def __init__(
        self,
        policy: WarmPolicy,
        free_memory_mb: FreeMemory,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``free_memory_mb``: the free memory of GPUs (``gpus.free_memory_mb``, NVML);
        ``sleep``: how the sweep waits its interval (tests pass one they drive)."""
        self.policy = policy
        self._free_memory_mb = free_memory_mb
        self._sleep = sleep
        self._holders: dict[str, WarmSpare] = {}  # GPU set -> its warm spare (or one warming)
        self._sweep: asyncio.Task[None] | None = None

    @property
    def spares(self) -> list[WarmSpare]:
        """The warm spares (announced or warming), by GPU set."""
        return [self._holders[key] for key in sorted(self._holders)]

    def describe(self) -> list[str]:
        """A line per warm spare: its GPU set, template, pid and MiB held per GPU."""
        return [spare.describe() for spare in self.spares]

    async def take(self, template: TemplateProcess | None, key: str) -> None:
        """A child of ``template`` (None: a fresh interpreter) is about to run on GPU set
        ``key``: drop every warm spare on any of its GPUs but ``template``'s own for exactly
        ``key`` (which the fork then uses), then apply the memory rule to the others.
        Raises nothing (a lost template's spares are gone with it)."""
        wanted = set(_indices(key))
        for held, spare in list(self._holders.items()):
            if not wanted & set(_indices(held)) or self._holders.get(held) is not spare:
                continue
            del self._holders[held]
            if held == key and spare.template is template and key in spare.template.warm_spares:
                continue  # the fork takes it
            # Another set on these GPUs, another template's, or one not announced yet (the
            # fork cannot take it, and it would hold memory on the job's GPUs): dropped.
            await self._drop(spare, "its GPU(s) are needed by a job or an instance")
        await self.check()

    async def released(self, template: TemplateProcess, key: str, still_free: bool) -> None:
        """A job of ``template`` on ``key`` ended and released it (``still_free``: no other job
        took any of it meanwhile): warm a spare for the next job on that set, if the rules
        allow, then apply the memory rule to the others. Raises nothing."""
        if self._may_warm(template, key, still_free):
            await self._warm(template, key)
        await self.check()

    def _may_warm(self, template: TemplateProcess, key: str, still_free: bool) -> bool:
        if not self.policy.enabled or not key or not still_free or not template.alive:
            return False
        current = self._holders.get(key)
        if current is not None and current.template is template:
            return False  # warm (or warming) there already
        return template.warm_failures[key] < MAX_WARM_FAILURES

    async def _warm(self, template: TemplateProcess, key: str) -> None:
        previous = self._holders.get(key)
        # Without the spare it replaces, each GPU would have its hold free again.
        free = self._free_without(key, previous.held_mb if previous is not None else {})
        if free is None:
            return
        short = {index: mb for index, mb in free.items() if mb < self.policy.min_free_mb}
        if short:
            log.info("not warming a spare for GPU(s) %s: memory is short (%s MiB free)", key, short)
            return
        # Ours before any await: a job taking these GPUs meanwhile finds (and drops) it.
        spare = self._holders[key] = WarmSpare(key, template, dict(free))
        template.on_warm = self._announced
        if previous is not None:
            await self._drop(previous, f"template {template.python} warms that set now")
        if self._holders.get(key) is not spare:
            return  # taken by a job while the previous one was dropped
        try:
            await template.warm(key, self.policy.library, self.policy.warmup)
        except TemplateLost:
            if self._holders.get(key) is spare:
                del self._holders[key]
            return
        self._start_sweep()

    def _announced(self, template: TemplateProcess, key: str, memory: list[list[int]]) -> None:
        """``template`` says its spare for ``key`` is warm, with ``[free, total]`` MiB per
        visible device (in the set's order): account its hold."""
        spare = self._holders.get(key)
        if spare is None or spare.template is not template:
            return  # dropped or replaced meanwhile; its drop command follows
        indices = _indices(key)
        spare.announced = True
        spare.device_mb = {
            index: (int(figures[0]), int(figures[1]))
            for index, figures in zip(indices, memory, strict=False)
            if len(figures) == 2
        }
        spare.held_mb = {
            index: max(0, spare.free_before_mb[index] - device[0])
            for index, device in spare.device_mb.items()
            if index in spare.free_before_mb
        }
        log.info(
            "warm spare for GPU(s) %s ready (pid %s, template %s): holds %s",
            key,
            template.warm_spares.get(key),
            template.python,
            _per_gpu(spare.held_mb, indices),
        )

    async def check(self) -> list[str]:
        """Apply the memory rule to every announced warm spare: drop one whose GPU set has a GPU
        with less than ``min_free_mb`` free counting the spare's own hold as free. Forget spares
        whose template or process is gone. The GPU sets dropped; raises nothing (a failing
        free-memory reading drops nothing)."""
        dropped = []
        for key, spare in list(self._holders.items()):
            if spare.gone:
                if self._holders.get(key) is spare:
                    del self._holders[key]
                continue
            if not spare.announced:
                continue  # its hold is not known yet: the next check sees it
            free = self._free_without(key, spare.held_mb)
            short = {i: mb for i, mb in (free or {}).items() if mb < self.policy.min_free_mb}
            if short and self._holders.get(key) is spare:
                del self._holders[key]
                await self._drop(spare, f"memory is short ({short} MiB free without it)")
                dropped.append(key)
        return dropped

    def _free_without(self, key: str, held: Mapping[int, int]) -> dict[int, int] | None:
        """Free MiB of each GPU of ``key`` that NVML answers for, plus ``held``; None (and a
        warning) when reading it failed."""
        try:
            free = self._free_memory_mb(_indices(key))
        except Exception as exc:  # NVML's own errors and anything an injected reader raises
            log.warning("cannot read the free memory of GPU(s) %s: %s", key, exc)
            return None
        return {index: int(mb) + held.get(index, 0) for index, mb in free.items()}

    def _start_sweep(self) -> None:
        interval = self.policy.check_interval_s
        if interval > 0 and (self._sweep is None or self._sweep.done()):
            self._sweep = asyncio.create_task(self._sweep_while_warm(interval))

    async def _sweep_while_warm(self, interval: float) -> None:
        """Every ``interval`` seconds, :meth:`check`, for as long as any warm spare exists."""
        while self._holders:
            await self._sleep(interval)
            try:
                await self.check()
            except Exception:  # never ends the sweep: the next one may do better
                log.exception("the warm-spare memory check failed")

    async def close(self) -> None:
        """Stop the sweep (the pool is closing; its templates take their spares with them)."""
        sweep, self._sweep = self._sweep, None
        if sweep is not None:
            sweep.cancel()
            await asyncio.gather(sweep, return_exceptions=True)

    async def _drop(self, spare: WarmSpare, why: str) -> None:
        if spare.announced:
            log.info(
                "dropping the warm spare for GPU(s) %s (holding %s): %s",
                spare.gpus,
                _per_gpu(spare.held_mb, _indices(spare.gpus)),
                why,
            )
        try:
            await spare.template.drop_warm(spare.gpus)
        except TemplateLost:
            pass  # gone, and its spares with it
