"""Which templates keep a CUDA-warm spare, and for which GPU sets.

A job that gets GPUs spends most of its first CUDA call creating a context; a spare warmed for
its GPU set ahead of it (``sandbox_child/cuda_warm.py``) has done that while no job waited. The
rules, so that warm spares never cost a job what they save another:

- at most one warm spare per GPU set, and only for GPUs no job or instance holds: a job about to
  run on GPUs takes the warm spare of exactly its set from its own template, and every other warm
  spare on any of those GPUs is dropped first (its context holds GPU memory the job may need);
- a spare is warmed where the last job on that set ran (its env's template), once the job has
  released the GPUs and they are still free, and when the devices report enough free memory;
- a job never gets a spare warmed for other GPUs (the template looks the set up exactly);
- a set whose warm-ups keep failing (the driver refuses) is not warmed again by that template.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.template_process import TemplateLost, TemplateProcess

log = logging.getLogger(__name__)

#: Warm-ups of one set that may fail in a template before it stops warming that set.
MAX_WARM_FAILURES = 3

FreeMemory = Callable[[Iterable[int]], Mapping[int, int]]


@dataclass(frozen=True)
class WarmPolicy:
    """``enabled``: keep warm spares at all (``SANDVISOR_CUDA_WARM_SPARES``); ``library``: the
    CUDA driver library; ``warmup``: a framework to warm on top of the driver ("torch") or "";
    ``min_free_mb``: warm only when each GPU of the set has this much memory free (where NVML
    answers)."""

    enabled: bool = True
    library: str = "libcuda.so.1"
    warmup: str = ""
    min_free_mb: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> WarmPolicy:
        """The policy ``SANDVISOR_CUDA_*`` describe; off on a worker without GPUs."""
        return cls(
            enabled=settings.cuda_warm_spares,
            library=settings.cuda_driver_library,
            warmup=settings.cuda_warmup,
            min_free_mb=settings.cuda_warm_min_free_mb,
        )


def gpu_set(indices: Iterable[int]) -> str:
    """The key of a GPU set, as CUDA_VISIBLE_DEVICES names it: ``"0"``, ``"1,3"``."""
    return ",".join(str(index) for index in sorted(indices))


def _indices(key: str) -> set[int]:
    return {int(part) for part in key.split(",") if part}


class WarmSpares:
    """Keeps the rules above across every template of a pool."""

    def __init__(self, policy: WarmPolicy, free_memory_mb: FreeMemory) -> None:
        self.policy = policy
        self._free_memory_mb = free_memory_mb
        self._holders: dict[str, TemplateProcess] = {}  # GPU set -> the template warming it

    async def take(self, template: TemplateProcess, key: str) -> None:
        """A job of ``template`` is about to run on GPU set ``key``: drop every warm spare on
        any of its GPUs but ``template``'s own for exactly ``key`` (which the fork then uses)."""
        wanted = _indices(key)
        for held, holder in list(self._holders.items()):
            if not wanted & _indices(held):
                continue
            del self._holders[held]
            if held == key and holder is template and key in template.warm_spares:
                continue  # the fork takes it
            # Another set on these GPUs, another template's, or one not announced yet (the
            # fork cannot take it, and it would hold memory on the job's GPUs): dropped.
            await self._drop(holder, held)

    async def released(self, template: TemplateProcess, key: str, still_free: bool) -> None:
        """A job of ``template`` on ``key`` ended and released it (``still_free``: no other job
        took any of it meanwhile): warm a spare for the next job on that set, if the rules allow."""
        if not self.policy.enabled or not key or not still_free or not template.alive:
            return
        if template.warm_failures[key] >= MAX_WARM_FAILURES:
            return
        short = {
            index: free
            for index, free in self._free_memory_mb(_indices(key)).items()
            if free < self.policy.min_free_mb
        }
        if short:
            log.info("not warming a spare for GPU(s) %s: memory is short (%s MiB free)", key, short)
            return
        previous = self._holders.get(key)
        if previous is not None and previous is not template:
            await self._drop(previous, key)
        self._holders[key] = template
        try:
            await template.warm(key, self.policy.library, self.policy.warmup)
        except TemplateLost:
            self._holders.pop(key, None)

    async def _drop(self, template: TemplateProcess, key: str) -> None:
        try:
            await template.drop_warm(key)
        except TemplateLost:
            pass  # gone, and its spares with it
