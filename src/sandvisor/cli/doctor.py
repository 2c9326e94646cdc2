"""``sandvisor doctor``: what this worker would run with, and whether each part is healthy.

One line per check: ``ok``, ``warn`` (works, but look at it) or ``FAIL`` (jobs will fail). Exit
status 1 when anything fails. The last check runs a real job in a child, end to end.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from sandvisor.cli import EXIT_JOB_FAILED, EXIT_OK

if TYPE_CHECKING:  # the settings model imports pydantic: only when the command runs
    from sandvisor.supervisor.settings import Settings

GIB = 1024**3
#: Below this much free space in the store, env builds are likely to fail.
LOW_DISK_BYTES = 2 * GIB
MIN_PYTHON = (3, 10)

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def add_doctor_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this worker: Python, uv, store, volume, GPUs, limits, a test job"
    )
    parser.add_argument("--no-job", action="store_true", help="skip running a test job")
    parser.set_defaults(handler=doctor_command)


def doctor_command(options: argparse.Namespace) -> int:
    from sandvisor.supervisor.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print_checks([Check("settings", "FAIL", str(exc))])
        return EXIT_JOB_FAILED
    checks = [guarded(name, check, settings) for name, check in CHECKS]
    if not options.no_job:
        checks.append(guarded("test job", check_job, settings))
    print_checks(checks)
    return EXIT_JOB_FAILED if any(check.status == "FAIL" for check in checks) else EXIT_OK


def guarded(name: str, check: Callable[[Settings], Check], settings: Settings) -> Check:
    try:
        return check(settings)
    except Exception as exc:  # one broken check must not hide the others
        return Check(name, "FAIL", f"{type(exc).__name__}: {exc}")


def print_checks(checks: list[Check]) -> None:
    for check in checks:
        print(f"{check.status:<5} {check.name:<12} {check.detail}")


# -- checks --------------------------------------------------------------------------------------


def check_python(settings: Settings) -> Check:
    version = platform.python_version()
    status: Status = "ok" if sys.version_info[:2] >= MIN_PYTHON else "FAIL"
    return Check("python", status, f"{version} ({sys.executable})")


def check_uv(settings: Settings) -> Check:
    from uv import find_uv_bin

    binary = find_uv_bin()
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return Check("uv", "FAIL", f"{binary} --version exited {done.returncode}")
    return Check("uv", "ok", f"{done.stdout.strip()} ({binary})")


def check_store(settings: Settings) -> Check:
    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check("store", "FAIL", f"{home} is not writable: {exc.strerror or exc}")
    free = shutil.disk_usage(home).free
    status: Status = "ok" if free >= LOW_DISK_BYTES else "warn"
    return Check("store", status, f"{home} ({free / GIB:.1f} GiB free)")


def check_volume(settings: Settings) -> Check:
    from sandvisor.supervisor.settings import RUNPOD_VOLUME, volume_present

    if not volume_present():
        return Check("volume", "ok", f"no {RUNPOD_VOLUME}: envs and caches on local disk")
    on_volume = settings.home.is_relative_to(RUNPOD_VOLUME)
    where = "envs and HF caches on it" if on_volume else f"but the store is at {settings.home}"
    return Check("volume", "ok" if on_volume else "warn", f"{RUNPOD_VOLUME} mounted, {where}")


def check_gpus(settings: Settings) -> Check:
    from sandvisor.supervisor.gpus import detect_gpus

    gpus = detect_gpus(settings)
    if not gpus:
        return Check("gpus", "ok", "none (CPU jobs only)")
    named = ", ".join(f"{gpu.index}: {gpu.name or 'GPU'}" for gpu in gpus)
    return Check("gpus", "ok", f"{len(gpus)} ({named})")


def check_privilege(settings: Settings) -> Check:
    """How jobs run: as identities of the pool (root), or as this user, and whether a job
    identity can open the GPU devices."""
    from sandvisor.supervisor.privilege import doctor_line

    status, line = doctor_line(settings)
    return Check("privilege", status, line)


def check_confinement(settings: Settings) -> Check:
    """Whether env interpreters (templates, a spawned job's host) start confined in a user
    namespace (a real one is started to see): ``warn`` when they run as root though jobs
    switch (a dependency's code would run as root), or when jobs do not switch at all."""
    from sandvisor.supervisor.confinement import decide_confinement
    from sandvisor.supervisor.privilege import decide

    confinement, line = decide_confinement(settings, decide(settings))
    return Check("confinement", "ok" if confinement else "warn", line)


def check_limits(settings: Settings) -> Check:
    from sandvisor.supervisor.limits import Limits
    from sandvisor.supervisor.settings import physical_memory_bytes

    limits = Limits.resolve(settings)
    parts = [
        f"timeout {limits.timeout_s:g} s",
        f"memory {limits.memory_mb} MiB",
        f"cpu {f'{limits.cpu_s:g} s' if limits.cpu_s else 'unlimited'}",
        f"procs {limits.max_procs}",
        f"output {settings.max_output_bytes // 1024} KiB",
        f"result {settings.max_result_bytes // (1024 * 1024)} MiB",
        f"grace {limits.grace_s:g} s",
    ]
    total_mb = physical_memory_bytes() // (1024 * 1024)
    if limits.memory_mb > total_mb:
        return Check("limits", "warn", ", ".join(parts) + f" (over the {total_mb} MiB of RAM)")
    return Check("limits", "ok", ", ".join(parts))


def check_worker(settings: Settings) -> Check:
    from sandvisor.worker.serve import default_concurrency

    concurrency = default_concurrency(settings)
    source = "configured" if settings.concurrency else "default"
    runpod_version = _version("runpod")
    mode = "generator (/stream)" if settings.runpod_stream else "dict"
    return Check(
        "worker",
        "ok" if runpod_version else "FAIL",
        f"runpod {runpod_version or 'not installed'}, {concurrency} jobs at once ({source}), "
        f"{mode} handler, progress every {settings.progress_interval_s:g} s",
    )


def check_app(settings: Settings) -> Check:
    from sandvisor.supervisor.manifest import MANIFEST_NAME, load_manifest

    if not (settings.app_dir / MANIFEST_NAME).is_file():
        return Check("app", "ok", f"no {settings.app_dir / MANIFEST_NAME}: requests carry code")
    manifest = load_manifest(settings.app_dir)
    names = sorted(manifest.get("function_registry") or {})
    return Check("app", "ok", f"{settings.app_dir}: {len(names)} deployed ({', '.join(names)})")


def check_job(settings: Settings) -> Check:
    import asyncio

    started = time.monotonic()
    response = asyncio.run(_run_probe(settings))
    elapsed = time.monotonic() - started
    if not response.success or response.json_result != 42:
        return Check("test job", "FAIL", (response.error or "wrong result").splitlines()[0])
    return Check("test job", "ok", f"ran in an isolated child in {elapsed:.2f} s")


async def _run_probe(settings: Settings) -> Any:
    from sandvisor.supervisor.core import Supervisor

    code = "def probe(x):\n    return x * 2\n"
    request = {"function_name": "probe", "function_code": code, "args": [21]}
    async with Supervisor(settings.model_copy(update={"templates": False})) as supervisor:
        return await supervisor.run(request | {"serialization_format": "json"})


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


CHECKS: tuple[tuple[str, Callable[[Settings], Check]], ...] = (
    ("python", check_python),
    ("uv", check_uv),
    ("store", check_store),
    ("volume", check_volume),
    ("gpus", check_gpus),
    ("privilege", check_privilege),
    ("confinement", check_confinement),
    ("limits", check_limits),
    ("worker", check_worker),
    ("app", check_app),
)
