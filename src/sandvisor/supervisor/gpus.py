"""GPUs: what this worker has, which job holds which, and how much memory a job's processes use.

Inventory, first that answers: ``SANDVISOR_GPUS`` (``""`` none, ``"0,1"`` two: tests and odd
hosts declare GPUs this way), NVML (nvidia-ml-py), ``nvidia-smi -L``; otherwise none. A job holds
its GPUs through a :class:`GpuLease` from the :class:`GpuPool` for its whole run; its child sees
exactly those through ``CUDA_VISIBLE_DEVICES``. Jobs that want more GPUs than are free wait in
arrival order, so a job asking for many is never starved by a stream of jobs asking for one.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sandvisor.supervisor.settings import Settings

_SMI_LINE = re.compile(r"^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?$")
_SMI_TIMEOUT_S = 10.0


class GpuError(RuntimeError):
    """A job asked the pool for GPUs it can never get."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str = ""
    uuid: str = ""


def detect_gpus(settings: Settings) -> list[Gpu]:
    """The GPUs jobs may use: declared by ``settings.gpus``, else found by NVML or nvidia-smi."""
    if settings.gpus is not None:
        return parse_declared(settings.gpus)
    return _from_nvml() or _from_nvidia_smi()


def parse_declared(value: str) -> list[Gpu]:
    """``"0,1"`` -> two GPUs with those indices; ``""`` -> none."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    gpus = []
    for part in parts:
        if not part.isdigit():
            raise GpuError(f"SANDVISOR_GPUS: {part!r} is not a GPU index (expected e.g. '0,1')")
        gpus.append(Gpu(index=int(part)))
    return gpus


_nvml_module: Any = None
_nvml_tried = False


def _nvml() -> Any:
    """``pynvml``, initialised once for the whole process (the watchdog asks often); None when
    no NVML library or driver answers."""
    global _nvml_module, _nvml_tried
    if not _nvml_tried:
        _nvml_tried = True
        try:
            import pynvml  # nvidia-ml-py: loads libnvidia-ml only on nvmlInit

            pynvml.nvmlInit()
            _nvml_module = pynvml
        except Exception:  # no library, no driver, no device: NVML says so only by raising
            _nvml_module = None
    return _nvml_module


def _from_nvml() -> list[Gpu]:
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                Gpu(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                )
            )
        return gpus
    except Exception:  # a device that stopped answering: NVML says so only by raising
        return []


def _from_nvidia_smi() -> list[Gpu]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_smi_listing(listing)


def parse_smi_listing(listing: str) -> list[Gpu]:
    """Lines like ``GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)``; other lines are skipped."""
    gpus = []
    for line in listing.splitlines():
        match = _SMI_LINE.match(line.strip())
        if match:
            gpus.append(Gpu(int(match[1]), match[2], match[3] or ""))
    return gpus


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def gpu_memory_by_pid() -> dict[int, int]:
    """Bytes of GPU memory each process uses, from NVML; empty where NVML is absent.

    NVML reports host pids; inside a container with its own pid namespace they may not match
    ours, in which case a job's GPU memory reads as zero rather than wrong.
    """
    nvml = _nvml()
    if nvml is None:
        return {}
    try:
        used: dict[int, int] = {}
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used[proc.pid] = used.get(proc.pid, 0) + (proc.usedGpuMemory or 0)
        return used
    except Exception:  # see _from_nvml
        return {}


def free_memory_mb(indices: Iterable[int]) -> dict[int, int]:
    """Free memory (MiB) of each GPU in ``indices`` as NVML reports it; {} where NVML does not
    answer (no driver, or a device that stopped answering)."""
    nvml = _nvml()
    if nvml is None:
        return {}
    try:
        return {
            index: nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index)).free
            // 2**20
            for index in indices
        }
    except Exception:  # see _from_nvml
        return {}


@dataclass(frozen=True, eq=False)
class GpuLease:
    """GPUs held by one job until released (``async with`` or :meth:`GpuPool.release`)."""

    pool: GpuPool
    gpus: tuple[Gpu, ...]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(gpu.index for gpu in self.gpus)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(index) for index in self.indices)

    def environ(self) -> dict[str, str]:
        """The child's CUDA variables: exactly the leased GPUs, numbered as NVML numbers them."""
        # CUDA's default order (fastest first) may differ from NVML's and nvidia-smi's (PCI bus),
        # under which the indices were chosen; an empty value hides every GPU.
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
        }

    def release(self) -> None:
        self.pool.release(self)

    async def __aenter__(self) -> GpuLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(eq=False)
class _Waiter:
    count: int
    future: asyncio.Future[tuple[Gpu, ...]]


@dataclass
class GpuPool:
    """Hands out GPUs to jobs, first come first served."""

    gpus: Sequence[Gpu]
    _free: list[Gpu] = field(init=False)
    _waiters: deque[_Waiter] = field(init=False, default_factory=deque)
    _leased: set[GpuLease] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self._free = list(self.gpus)

    @property
    def total(self) -> int:
        return len(self.gpus)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def all_free(self, indices: Iterable[int]) -> bool:
        """Whether no job or instance holds any of the GPUs ``indices``."""
        free = {gpu.index for gpu in self._free}
        return all(index in free for index in indices)

    def try_acquire(self, count: int) -> GpuLease | None:
        """Hold ``count`` GPUs now if they are free and no earlier job waits; else None."""
        if count < 0 or count > self.total:
            raise GpuError(f"asked for {count} GPU(s); this worker has {self.total}")
        if not self._waiters and count <= len(self._free):
            return self._lease(self._take(count))
        return None

    async def acquire(self, count: int) -> GpuLease:
        """Wait until ``count`` GPUs are free and no earlier job is waiting, then hold them."""
        lease = self.try_acquire(count)
        if lease is not None:
            return lease
        waiter = _Waiter(count, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            gpus = await waiter.future
        except BaseException:
            self._abandon(waiter)
            raise
        return self._lease(gpus)

    def release(self, lease: GpuLease) -> None:
        if lease not in self._leased:
            return  # released twice: the second is a no-op
        self._leased.discard(lease)
        self._free.extend(lease.gpus)
        self._free.sort(key=lambda gpu: gpu.index)
        self._grant()

    def _lease(self, gpus: tuple[Gpu, ...]) -> GpuLease:
        lease = GpuLease(self, gpus)
        self._leased.add(lease)
        return lease

    def _take(self, count: int) -> tuple[Gpu, ...]:
        taken, self._free = tuple(self._free[:count]), self._free[count:]
        return taken

    def _grant(self) -> None:
        # Strict arrival order: the head waits for enough GPUs even if a later, smaller
        # request would fit now; that is what keeps large requests from starving.
        while self._waiters and self._waiters[0].count <= len(self._free):
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(self._take(waiter.count))

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter was cancelled: leave the queue, and give back GPUs granted in the meantime."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif waiter.future.done() and not waiter.future.cancelled():
            self._free.extend(waiter.future.result())
            self._free.sort(key=lambda gpu: gpu.index)
        self._grant()
