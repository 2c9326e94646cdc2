"""The job's own code as a real module: written to its dir, registered, compiled as ``import`` would.

A dataclass, ``typing.get_type_hints``, pydantic and ``pickle`` look a class's module up in
``sys.modules``; ``inspect.getsource``, tracebacks and multiprocessing's spawn children read or
re-import its file. So the request's code runs as a module imported from a file would.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import traceback
import types
from typing import Any

import cloudpickle

from sandvisor.sandbox_child.failures import invalid, user_code
from sandvisor.sandbox_child.workspace import ModulePathError, write_job_source


def load_source(
    source: str, module_name: str, job: dict[str, Any], user_files: set[str]
) -> dict[str, Any]:
    """Run the request's code as the module ``module_name``, as ``import`` would from a file.

    The source is written to ``<workdir>/<module_name>.py`` and run as that module: in
    ``sys.modules`` for the job's life (dataclasses, ``typing.get_type_hints``, pydantic and
    ``pickle`` look classes up there), with a real ``__file__``, compiled with its own
    ``__future__`` flags, not this file's. What it defines pickles by reference inside the job
    (multiprocessing's spawn and forkserver children re-import it from the job's dir) and by value
    for cloudpickle, because the caller that decodes a result has no such module.
    """
    try:
        path = write_job_source(
            job["workdir"], module_name, source, job["request"].get("modules") or {}
        )
    except ModulePathError as exc:
        raise invalid(str(exc)) from None
    except OSError as exc:
        raise invalid(f"cannot write the job's {module_name}: {exc}") from None
    user_files.add(path)
    sys.argv = [path]  # as ``python <file>`` gives: no runtime flags for argparse to trip on
    try:
        # dont_inherit: a plain import compiles the file with its own flags only; without it
        # this module's ``from __future__ import annotations`` would turn the job's
        # annotations into strings.
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        raise invalid(
            f"syntax error in {module_name} at {where}: {exc.msg}",
            "".join(traceback.format_exception_only(type(exc), exc)),
        ) from None
    module = new_module(module_name, path)
    with user_code(user_files):
        exec(code, module.__dict__)
    return module.__dict__


def new_module(name: str, path: str) -> types.ModuleType:
    """An empty module as the import system makes one for ``path``, registered as ``name``.

    Registered before its code runs, as ``import`` does: a class body or a decorator that looks
    its module up in ``sys.modules`` (dataclasses does) finds it. Registered with cloudpickle too,
    so a result or an instance it defines reaches the caller by value.
    """
    # What ``spec_from_file_location`` + ``module_from_spec`` give a top-level .py file, built
    # directly: those two cost 0.25 ms in a freshly forked child (page faults on the way), this
    # a third of it.
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.machinery.ModuleSpec(name, loader, origin=path)
    spec.has_location = True
    module = types.ModuleType(name)
    module.__loader__, module.__spec__, module.__package__ = loader, spec, ""
    module.__file__ = path
    module.__cached__ = spec.cached = _bytecode_path(path)
    sys.modules[name] = module
    cloudpickle.register_pickle_by_value(module)
    return module


def import_deployed(module_name: str, sys_path: list[str], user_files: set[str]) -> dict[str, Any]:
    """Import the deployed app's module by its name, with the app's directory first on the path."""
    for entry in reversed(sys_path):
        sys.path.insert(0, entry)
    with user_code(user_files):
        module = importlib.import_module(module_name)
    if module.__file__:
        user_files.add(module.__file__)
    return module.__dict__


def _bytecode_path(path: str) -> str:
    """Where ``importlib.util.cache_from_source`` puts the bytecode of ``path`` (a ``.py`` file),
    named as it names it (PEP 3147/488: ``__pycache__/<stem>.<cache tag>[.opt-N].pyc``), without
    its checks and their cost."""
    head, tail = os.path.split(path)
    stem = tail.rpartition(".")[0]
    optimize = f".opt-{sys.flags.optimize}" if sys.flags.optimize else ""
    tag = sys.implementation.cache_tag
    return os.path.join(head, "__pycache__", f"{stem}.{tag}{optimize}.pyc")
