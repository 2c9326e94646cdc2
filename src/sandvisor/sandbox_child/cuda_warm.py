"""A spare made CUDA-warm for one GPU set before its job arrives.

Creating a CUDA context is most of a forked GPU job's first-kernel latency (246 of 363 ms on an
H200, measured through ``Supervisor.run``). A template must never create one (a forked child
cannot use its parent's context), but a spare is a process of its own that waits for its job: it
can fix ``CUDA_VISIBLE_DEVICES`` to the set it is for and retain each visible device's *primary*
context through the driver API, the context torch, CuPy and JAX themselves use, so the job's
first CUDA call finds it made. A framework warm-up (``torch``: its CUDA state and a first op) can
follow, when configured.

Driver calls, from the CUDA Driver API reference (``cuInit``, ``cuDeviceGetCount``,
``cuDeviceGet``, ``cuDevicePrimaryCtxRetain``, ``cuCtxSetCurrent``): each returns a ``CUresult``,
0 being ``CUDA_SUCCESS``. Stdlib only (ctypes), as all of the child runtime.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from typing import Any


class WarmUpError(RuntimeError):
    """The driver refused a step of the warm-up (its name and CUresult in the message)."""


def warm_up(spec: dict[str, Any]) -> None:
    """Make this process ready for a job on ``spec["gpus"]`` (CUDA_VISIBLE_DEVICES syntax);
    ``spec["library"]``: the driver library to load; ``spec["warmup"]``: a framework to warm
    too ("torch"), or empty. Raises WarmUpError or OSError (no such library)."""
    gpus = str(spec["gpus"])
    # The driver reads both at cuInit; the job's environment later sets the same values.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    retain_primary_contexts(str(spec["library"]), len(gpus.split(",")))
    framework = spec.get("warmup") or ""
    if framework:
        warm_framework(framework)


def retain_primary_contexts(library: str, count: int) -> None:
    """``cuInit``, then retain the primary context of each of the ``count`` visible devices and
    make the first one current. The retained contexts live as long as this process."""
    driver = ctypes.CDLL(library)
    _check(driver.cuInit(0), "cuInit")
    visible = ctypes.c_int(0)
    _check(driver.cuDeviceGetCount(ctypes.byref(visible)), "cuDeviceGetCount")
    if visible.value < count:
        raise WarmUpError(f"the driver sees {visible.value} device(s), not {count}")
    first = None
    for ordinal in range(count):
        device = ctypes.c_int(0)
        _check(driver.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
        context = ctypes.c_void_p(0)
        _check(
            driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),
            "cuDevicePrimaryCtxRetain",
        )
        first = first if first is not None else context
    if first is not None:
        _check(driver.cuCtxSetCurrent(first), "cuCtxSetCurrent")


def warm_framework(name: str) -> None:
    """Warm a framework's own CUDA state on top of the driver's: ``torch`` initializes its CUDA
    module and runs a first op (its kernels and allocator ready). Raises WarmUpError for a
    framework it does not know."""
    if name != "torch":
        raise WarmUpError(f"no warm-up for framework {name!r} (known: torch)")
    torch = importlib.import_module("torch")
    torch.cuda.init()
    torch.ones(1, device="cuda").sum().item()


def _check(result: int, call: str) -> None:
    if result != 0:
        raise WarmUpError(f"{call} returned CUresult {result}")
