"""A child's environment: built from the worker's, minus its secrets, plus what a child needs.

One function assembles a job's: :func:`job_environment` (the scrubbed base, the job's mark, its
venv, its GPUs); :func:`child_environment` makes that base once per supervisor.

User code runs with whatever a job's author wrote, so the worker's credentials (the RunPod API
key, webhook URLs that accept job results, cloud keys, tokens) never reach it unless the
operator names them in ``SANDVISOR_PASS_VARS``. Names are matched as shell-style patterns,
case-sensitively, as the variables themselves are.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from sandvisor.protocol.messages import JOB_ENV_VAR
from sandvisor.supervisor.proctree import job_environ
from sandvisor.supervisor.settings import ENV_PREFIX, Settings, volume_present

if TYPE_CHECKING:  # envs imports this module (is_secret): a runtime import would be a cycle
    from sandvisor.supervisor.envs import EnvLease
    from sandvisor.supervisor.gpus import GpuLease

#: Names that hold credentials by convention, removed on top of ``settings.secret_patterns``;
#: matched in upper case (``runpod_api_key`` is ``RUNPOD_API_KEY``). Whole words, not
#: substrings: ``TOKENIZERS_PARALLELISM`` is not a token, ``PWD`` is no password.
CONVENTIONAL_SECRETS: tuple[str, ...] = (
    "TOKEN",
    "*_TOKEN",
    "SECRET",
    "*_SECRET",
    "*_SECRETS",
    "*_SECRET_KEY",
    "API_KEY",
    "APIKEY",
    "*_APIKEY",
    "*_KEY",
    "PASSWORD",
    "PASSWD",
    "*_PASSWORD",
    "*_PASS",
    "*_PASSWD",
    "*_CREDENTIALS",
    "*_DSN",
    "*_CONNECTION_STRING",
    "DATABASE_URL",
)

#: A value that carries a password whatever its name: a URL with one in it
#: (``postgres://user:pw@host/db``, ``https://user:token@index/simple``).
_URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")

# The supervisor's own interpreter settings, which would break or hijack a child interpreter
# of another venv (PYTHONINSPECT would even make it wait on an interactive prompt).
_INTERPRETER_VARS = ("PYTHONHOME", "PYTHONINSPECT", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_*")

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Always set in a child: unbuffered output reaches the log stream as it is written, and a
#: crash in C code prints the Python stack before the process dies of its signal.
CHILD_FIXED: dict[str, str] = {"PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def is_secret(name: str, settings: Settings, value: str | None = None) -> bool:
    """True when variable ``name`` (holding ``value``, when known) must not reach a child: its
    name, in upper case, matches a secret pattern (configured or conventional), or its value is
    a URL with a password; and no pass pattern (``SANDVISOR_PASS_VARS``) names it."""
    upper = name.upper()
    secret = (
        matches(upper, (pattern.upper() for pattern in settings.secret_patterns))
        or matches(upper, CONVENTIONAL_SECRETS)
        or (value is not None and _URL_WITH_PASSWORD.match(value) is not None)
    )
    return secret and not matches(name, settings.pass_vars)


def child_environment(
    settings: Settings, environ: Mapping[str, str], switching: bool = False
) -> dict[str, str]:
    """The environment of a job's child, built from ``environ`` (the worker's own);
    ``switching``: jobs run as identities of the pool (see ``privilege.py``)."""
    env = {
        name: value
        for name, value in environ.items()
        if not is_secret(name, settings, value)
        and not matches(name, _INTERPRETER_VARS)
        # Supervisor configuration is ours; the core adds the job's own marks afterwards.
        and not name.startswith(ENV_PREFIX)
    }
    env.setdefault("PATH", _DEFAULT_PATH)
    env.setdefault("HOME", _home())
    env.setdefault("LANG", "C.UTF-8")
    env.update(cache_environment(settings, environ, switching))
    env.update(CHILD_FIXED)
    return env


def cache_environment(
    settings: Settings, environ: Mapping[str, str], switching: bool = False
) -> dict[str, str]:
    """Where jobs keep downloaded models: the shared cache under the store (on a RunPod network
    volume, not the container disk), unless ``environ`` (the worker's) names a place itself.
    Jobs under identities always get it: their HOME is private and goes with the job."""
    if (volume_present() or switching) and "HF_HOME" not in environ:
        return {"HF_HOME": str(settings.hf_home)}
    return {}


def private_environment(home: Path, base: Mapping[str, str]) -> dict[str, str]:
    """A job identity's own places: ``home`` as HOME, its ``tmp`` as TMPDIR, and its ``site``
    as where ``pip install`` puts packages (PIP_TARGET), importable by the job's subprocesses
    too (PYTHONPATH, before what ``base`` had there)."""
    site = str(home / "site")
    paths = [site, base["PYTHONPATH"]] if base.get("PYTHONPATH") else [site]
    return {
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "PIP_TARGET": site,
        "PYTHONPATH": os.pathsep.join(paths),
    }


def job_environment(
    base: Mapping[str, str],
    job_id: str,
    venv: EnvLease | None = None,
    gpus: GpuLease | None = None,
    private_home: Path | None = None,
) -> dict[str, str]:
    """A job child's whole environment: ``base`` (from :func:`child_environment`), the mark
    that finds every process of ``job_id``, ``venv``'s VIRTUAL_ENV and PATH, exactly
    ``gpus``'s CUDA devices (none visible for a lease of none), and the private places of a
    job under an identity (``private_home``: :func:`private_environment`). Returns a new dict."""
    env = dict(base) | job_environ(job_id)
    if private_home is not None:
        env |= private_environment(private_home, base)
    if venv is not None:
        env = venv.environ(env)
    if gpus is not None:
        env |= gpus.environ()
    return env


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid without a passwd entry (common in containers)
        return "/tmp"


def template_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A job's environment without what marks one job: a template belongs to none."""
    return {name: value for name, value in env.items() if name != JOB_ENV_VAR}
