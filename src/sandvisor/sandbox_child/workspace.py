"""The job's private working directory and the request's ``modules`` written into it."""

from __future__ import annotations

import os
import sys
from pathlib import PurePosixPath


class ModulePathError(ValueError):
    """A ``modules`` key is not a relative path to a ``.py`` file inside the job's directory."""


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


def enter_workdir(workdir: str, modules: dict[str, str]) -> None:
    """Create the private dir, write the modules, make it the cwd and the first entry of sys.path."""
    try:
        os.mkdir(workdir, mode=0o700)  # its parent, the jobs dir, exists: one syscall
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(workdir, mode=0o700, exist_ok=True)
    checked = [(checked_module_path(name), source) for name, source in modules.items()]
    for path, source in checked:
        target = os.path.join(workdir, *path.parts)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(source)
    os.chdir(workdir)
    sys.path.insert(0, workdir)
