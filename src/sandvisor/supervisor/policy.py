"""A child's environment: built from the worker's, minus its secrets, plus what a child needs.

User code runs with whatever a job's author wrote, so the worker's credentials (the RunPod API
key, webhook URLs that accept job results, cloud keys, tokens) never reach it unless the
operator names them in ``SANDVISOR_PASS_VARS``. Names are matched as shell-style patterns,
case-sensitively, as the variables themselves are.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from sandvisor.supervisor.settings import ENV_PREFIX, Settings

#: Names that hold credentials by convention, removed on top of ``settings.secret_patterns``.
#: Suffixes, not substrings: ``TOKENIZERS_PARALLELISM`` is not a token.
CONVENTIONAL_SECRETS: tuple[str, ...] = (
    "*_TOKEN",
    "*_API_KEY",
    "*_SECRET",
    "*_SECRET_KEY",
    "*_PASSWORD",
    "*_CREDENTIALS",
)

# The supervisor's own interpreter settings, which would break or hijack a child interpreter
# of another venv (PYTHONINSPECT would even make it wait on an interactive prompt).
_INTERPRETER_VARS = ("PYTHONHOME", "PYTHONINSPECT", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_*")

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Always set in a child: unbuffered output reaches the log stream as it is written, and a
#: crash in C code prints the Python stack before the process dies of its signal.
CHILD_FIXED: dict[str, str] = {"PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def is_secret(name: str, settings: Settings) -> bool:
    """True when ``name`` must not reach a child: a secret pattern matches, no pass pattern does."""
    secret = matches(name, settings.secret_patterns) or matches(name, CONVENTIONAL_SECRETS)
    return secret and not matches(name, settings.pass_vars)


def child_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a job's child, built from ``environ`` (the worker's own)."""
    env = {
        name: value
        for name, value in environ.items()
        if not is_secret(name, settings)
        and not matches(name, _INTERPRETER_VARS)
        # Supervisor configuration is ours; the core adds the job's own marks afterwards.
        and not name.startswith(ENV_PREFIX)
    }
    env.setdefault("PATH", _DEFAULT_PATH)
    env.setdefault("HOME", _home())
    env.setdefault("LANG", "C.UTF-8")
    env.update(CHILD_FIXED)
    return env


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid without a passwd entry (common in containers)
        return "/tmp"
