"""A spare made CUDA-warm for one GPU set before its job arrives.

Creating a CUDA context is most of a forked GPU job's first-kernel latency (246 of 363 ms on an
H200, measured through ``Supervisor.run``). A template must never create one (a forked child
cannot use its parent's context), but a spare is a process of its own that waits for its job: it
can fix ``CUDA_VISIBLE_DEVICES`` to the set it is for and retain each visible device's *primary*
context through the driver API, the context torch, CuPy and JAX themselves use, so the job's
first CUDA call finds it made. A framework warm-up (``torch``: its CUDA state and a first op) can
follow, when configured. Once warm, the spare reads each device's free and total memory from
the driver (``cuMemGetInfo_v2``, in its context) and reports it: the supervisor accounts the
spare's hold from it (``supervisor/warm_spares.py``).

Driver calls, from the CUDA Driver API reference (``cuInit``, ``cuDeviceGetCount``,
``cuDeviceGet``, ``cuDevicePrimaryCtxRetain``, ``cuCtxSetCurrent``, ``cuMemGetInfo_v2``): each
returns a ``CUresult``, 0 being ``CUDA_SUCCESS``. Stdlib only (ctypes), as all of the child
runtime.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from typing import Any

MIB = 1024 * 1024


class WarmUpError(RuntimeError):
    """The driver refused a step of the warm-up (its name and CUresult in the message)."""


def warm_up(spec: dict[str, Any]) -> list[list[int]]:
    """Make this process ready for a job on ``spec["gpus"]`` (CUDA_VISIBLE_DEVICES syntax);
    ``spec["library"]``: the driver library to load; ``spec["warmup"]``: a framework to warm
    too ("torch"), or empty. Returns :func:`device_memory` once warm (``[]`` when the driver
    cannot say). Raises WarmUpError or OSError (no such library)."""
    gpus = str(spec["gpus"])
    # The driver reads both at cuInit; the job's environment later sets the same values.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    driver = ctypes.CDLL(str(spec["library"]))
    contexts = retain_primary_contexts(driver, len(gpus.split(",")))
    framework = spec.get("warmup") or ""
    if framework:
        warm_framework(framework)
    return device_memory(driver, contexts)


def retain_primary_contexts(driver: ctypes.CDLL, count: int) -> list[ctypes.c_void_p]:
    """``cuInit``, then retain the primary context of each of the ``count`` visible devices and
    make the first one current; the contexts, by device ordinal. They live as long as this
    process. Raises WarmUpError."""
    _check(driver.cuInit(0), "cuInit")
    visible = ctypes.c_int(0)
    _check(driver.cuDeviceGetCount(ctypes.byref(visible)), "cuDeviceGetCount")
    if visible.value < count:
        raise WarmUpError(f"the driver sees {visible.value} device(s), not {count}")
    contexts = []
    for ordinal in range(count):
        device = ctypes.c_int(0)
        _check(driver.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
        context = ctypes.c_void_p(0)
        _check(
            driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),
            "cuDevicePrimaryCtxRetain",
        )
        contexts.append(context)
    if contexts:
        _check(driver.cuCtxSetCurrent(contexts[0]), "cuCtxSetCurrent")
    return contexts


def device_memory(driver: ctypes.CDLL, contexts: list[ctypes.c_void_p]) -> list[list[int]]:
    """``[free, total]`` memory in MiB of each device whose context is in ``contexts`` (by
    ordinal), from ``cuMemGetInfo_v2`` with that context current; the first is current again
    afterwards. ``[]`` when the driver lacks the call or refuses it: the figures are for
    accounting, and a spare that cannot give them is still warm. Raises nothing."""
    try:
        get_info = driver.cuMemGetInfo_v2
    except AttributeError:
        return []
    figures = []
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    for context in contexts:
        if driver.cuCtxSetCurrent(context) != 0:
            return []
        if get_info(ctypes.byref(free), ctypes.byref(total)) != 0:
            return []
        figures.append([free.value // MIB, total.value // MIB])
    if contexts:
        driver.cuCtxSetCurrent(contexts[0])
    return figures


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
