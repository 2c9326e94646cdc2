"""What a template imports ahead of its jobs, and the checks that say a preload is unsafe to fork.

Used by the template (``template.py``) when it starts; what it finds goes to the supervisor in
its ``ready`` frame, where learned preloads are judged (``supervisor/preload_trials.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator

#: Device files whose being open means the GPU driver was initialized in this process.
GPU_DEVICE_PREFIXES = ("/dev/nvidia", "/dev/kfd")


def preload(modules: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Import the preload list; returns (failed, noisy), each module -> what happened.

    A module that fails is reported, not fatal. A *noisy* one wrote to stdout or stderr, or
    issued a warning that the filters let through, while it was imported: a job that imports
    it itself shows that, so preloading it would change the job's output.

    Importing is all that happens: nothing here touches ``torch.cuda`` (or any device API), so a
    CUDA context is created, if ever, by the job in its own child after the fork.
    """
    failed: dict[str, str] = {}
    noisy: dict[str, str] = {}
    for name in modules:
        with _watching_output() as written, warnings.catch_warnings(record=True) as caught:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
        if caught:
            first = caught[0]
            noisy[name] = f"it warns on import ({first.category.__name__}: {first.message})"
        elif written():
            noisy[name] = f"it writes {written()} bytes of output on import"
    return failed, noisy


@contextlib.contextmanager
def _watching_output() -> Iterator[Callable[[], int]]:
    """Point fds 1 and 2 at a scratch file for the block; yields how many bytes were written
    to it. The template's own fds 1 and 2 are restored after."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = (os.dup(1), os.dup(2))
    size = [0]
    with tempfile.TemporaryFile() as scratch:
        try:
            os.dup2(scratch.fileno(), 1)
            os.dup2(scratch.fileno(), 2)
            yield lambda: size[0]
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            size[0] = os.fstat(scratch.fileno()).st_size
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def preload_threads() -> list[str]:
    """Python threads other than this one: a fork carries none of them into a job (a job
    would find a lock one of them held locked forever), so a preload that starts one is bad."""
    main = threading.main_thread()
    return sorted(thread.name for thread in threading.enumerate() if thread is not main)


def device_open() -> str | None:
    """A GPU device file this process holds open (a preload opened the driver: a CUDA context,
    or the start of one, that no forked child can use), or None."""
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for entry in entries:
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        if target.startswith(GPU_DEVICE_PREFIXES):
            return target
    return None


def rss_kb() -> int:
    """This process's resident set now, in KiB (``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE") // 1024


def cuda_initialized() -> bool:
    """Whether a preload initialized CUDA on import (a fork would then break CUDA in every job).

    Reads torch's own flag without calling into ``torch.cuda``, so asking cannot initialize it.
    """
    torch_cuda = sys.modules.get("torch.cuda")
    return bool(getattr(torch_cuda, "_initialized", False))
