"""What a job imported that its template had not: the evidence the template learns preloads from.

The template takes a snapshot of its top-level modules before it forks spares; a job child forked
from it reports, when its job has answered, the top-level modules it imported since. The
supervisor counts them per env and has the template import those that jobs keep importing (see
``supervisor/preload_learning.py``). A spawned child has no template and reports nothing.
"""

from __future__ import annotations

import os
import sys

#: Top-level modules of the template when it forked this child; None outside a template's child.
_TEMPLATE_MODULES: frozenset[str] | None = None
#: At most this many names in one report: a job that imports thousands still costs one frame.
MAX_REPORTED = 64
_NEVER = frozenset({"__main__", "__mp_main__", "sandvisor"})


def mark_template() -> None:
    """Take the template's snapshot; call it in the template, after preloading, before forking."""
    global _TEMPLATE_MODULES
    _TEMPLATE_MODULES = frozenset(name.partition(".")[0] for name in list(sys.modules))


def imported_since_template(workdir: str) -> list[str] | None:
    """Top-level public modules in ``sys.modules`` now that the template did not have, sorted,
    at most :data:`MAX_REPORTED`; None in a child that no template forked.

    Not counted: the job's own modules (their file is in ``workdir``), private names (a leading
    underscore: an extension its package imports), ``__main__`` and sandvisor itself.
    """
    if _TEMPLATE_MODULES is None:
        return None
    template = _TEMPLATE_MODULES
    found: list[str] = []
    inside = os.path.join(workdir, "")
    for name, module in list(sys.modules.items()):
        if "." in name or name in template or name.startswith("_") or name in _NEVER:
            continue
        if _is_inside(module, inside):
            continue
        found.append(name)
    found.sort()
    return found[:MAX_REPORTED]


def _is_inside(module: object, directory: str) -> bool:
    """Whether ``module`` was loaded from ``directory``: its file, or a namespace package's
    first path entry (it has no file)."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        search = getattr(module, "__path__", None)
        path = next(iter(search), None) if search is not None else None
    return isinstance(path, str) and os.path.join(path, "").startswith(directory)
