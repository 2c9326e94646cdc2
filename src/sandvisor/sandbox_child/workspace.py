"""The job's private working directory: the request's ``modules``, its own code, its ``sys.path``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import PurePosixPath


class ModulePathError(ValueError):
    """A ``modules`` key is not a relative path to a ``.py`` file inside the job's directory."""


def _launch_entry() -> str | None:
    """The ``sys.path`` entry ``python -m sandvisor.sandbox_child`` put first: the worker's cwd.

    A template or a spawned job's host is started with ``-m``, which puts the directory it was
    started in (the worker's own, the repository under pytest) first on ``sys.path``; a job must
    not import from there, as ``python`` run in the job's dir would not. Read when this module is
    first imported, which the runtime does at start, before any preload could touch ``sys.path``.
    None when we were not started that way (the supervisor imports this module too) or when
    ``-P`` / ``PYTHONSAFEPATH`` kept the entry out.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "sandvisor.sandbox_child.__main__":
        return None
    if getattr(sys.flags, "safe_path", False) or not sys.path:
        return None
    try:
        launch_dir = os.getcwd()
    except OSError:
        return None
    return sys.path[0] if sys.path[0] in (launch_dir, "") else None


_LAUNCH_ENTRY = _launch_entry()


def checked_module_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or "\\" in name or "\x00" in name:
        raise ModulePathError(f"modules key {name!r} is not a POSIX relative path")
    if path.is_absolute():
        raise ModulePathError(
            f"modules key {name!r} is absolute; only relative .py paths are allowed"
        )
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise ModulePathError(f"modules key {name!r} has '..', '.' or an empty part")
    if path.suffix != ".py":
        raise ModulePathError(f"modules key {name!r} is not a .py file")
    return path


def enter_workdir(workdir: str, modules: dict[str, str], made: bool = False) -> None:
    """Create the private dir (unless ``made``: a job identity's, made before its switch), write
    the modules, make it the cwd and the first entry of sys.path.

    The entry ``python -m`` added for the worker's own cwd goes: the job's ``sys.path`` is its
    dir, then what its environment gives (``PYTHONPATH``, its env's and the base env's site dirs).
    """
    if not made:
        make_workdir(workdir)
    checked = [(checked_module_path(name), source) for name, source in modules.items()]
    for path, source in checked:
        target = os.path.join(workdir, *path.parts)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        write_text(target, source)
    os.chdir(workdir)
    drop_launch_entry()
    sys.path.insert(0, workdir)


def make_workdir(workdir: str) -> None:
    """The job's private dir (0700), made unless it exists (a job run again on a fresh
    interpreter after its template died finds the one its first attempt made)."""
    try:
        os.mkdir(workdir, mode=0o700)  # its parent, the jobs dir, exists: one syscall
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(workdir, mode=0o700, exist_ok=True)


def drop_launch_entry() -> None:
    """Take the worker's cwd (see :func:`_launch_entry`) off ``sys.path``, where it is first.

    Only its first place: the same directory named again by ``PYTHONPATH`` is the job's to keep.
    """
    global _LAUNCH_ENTRY
    entry, _LAUNCH_ENTRY = _LAUNCH_ENTRY, None
    if entry is not None and sys.path and sys.path[0] == entry:
        del sys.path[0]


def write_job_source(workdir: str, module_name: str, source: str, modules: Iterable[str]) -> str:
    """Write the request's own code as ``<workdir>/<module_name>.py``; its path.

    A real file, so the module has a real ``__file__``: ``inspect.getsource``, tracebacks and
    ``linecache`` read it as they read any module, and a child started by multiprocessing's spawn
    or forkserver methods re-imports it by name from the job's dir. A ``modules`` entry of that
    name would shadow it (or be overwritten by it), so that is refused.
    """
    for name in modules:
        first = PurePosixPath(name).parts[0] if name else ""
        if first in (f"{module_name}.py", module_name):
            raise ModulePathError(
                f"modules key {name!r} takes the name of the request's own code "
                f"({module_name}); rename that module"
            )
    path = os.path.join(workdir, f"{module_name}.py")
    # Overwritten, not created exclusively: a job run again after its template died finds the
    # file its first attempt wrote.
    write_text(path, source)
    return path


def write_text(path: str, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path``, created or truncated as ``open(path, "w")`` does
    (mode 0666 less the umask); raises OSError.

    Straight to the descriptor: the io stack's objects cost a forked child page faults (0.07 ms
    of a hello-world job), and one ``os.write`` of the whole text is all it would do anyway.
    """
    data = memoryview(text.encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
