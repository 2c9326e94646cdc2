"""Running the bundled ``uv`` for env builds, with the environment it should see.

uv gets the supervisor's environment minus the secrets a job would not see (a package build runs
arbitrary code), except ``UV_*`` (index credentials are uv's business), and minus whatever would
point it at another interpreter or project; its cache is the
store's, and index settings come only from the supervisor's own ``UV_*`` variables. Callers add
``--no-config`` so a ``uv.toml`` lying around cannot add an index either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from uv import find_uv_bin

from sandvisor.supervisor.policy import is_secret
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.streaming import StreamedResult, run_streaming

# Variables that would make uv act on something other than the env we name with --python.
_REDIRECTING_VARS = (
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONHOME",
    "PYTHONPATH",
    "UV_PYTHON",
    "UV_SYSTEM_PYTHON",
    "UV_PROJECT_ENVIRONMENT",
    "UV_TARGET",
    "UV_PREFIX",
    "UV_BREAK_SYSTEM_PACKAGES",
)


def uv_environ(settings: Settings, source: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if source is None else source
    env = {
        name: value
        for name, value in source.items()
        if name not in _REDIRECTING_VARS
        and (name.startswith("UV_") or not is_secret(name, settings))
    }
    env["UV_CACHE_DIR"] = str(settings.uv_cache_dir)
    env["UV_PYTHON_DOWNLOADS"] = "never"  # envs use the base interpreter, nothing else
    env["UV_NO_PROGRESS"] = "1"
    env["NO_COLOR"] = "1"
    return env


async def run_uv(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, on_log: Callable[[str], None]
) -> StreamedResult:
    return await run_streaming(
        [find_uv_bin(), *args], env=env, cwd=cwd, on_log=on_log, program="uv"
    )
