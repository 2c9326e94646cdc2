"""``sandvisor serve``: runpod-python's worker loop with our handler, or the HTTP worker.

Queue mode is the default. ``--lb`` or ``FLASH_ENDPOINT_TYPE=lb`` (as runpod-flash sets it on a
load-balanced endpoint) serves HTTP instead (``lb.py``) on ``--host`` (``0.0.0.0``) and
``--port`` (``PORT``, else 80). ``import runpod`` costs about 2.6 s, so it happens only in
:func:`serve_queue`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sandvisor.supervisor.policy import cache_environment
from sandvisor.supervisor.settings import Settings, SettingsError
from sandvisor.worker.deployed import DeployedApp
from sandvisor.worker.handler import handler, set_deployed_app, stream_handler
from sandvisor.worker.host import SupervisorHost, SupervisorStartError, get_host


def default_concurrency(settings: Settings) -> int:
    """Jobs at once: configured, else one per GPU, else one per CPU this process may use."""
    if settings.concurrency:
        return settings.concurrency
    from sandvisor.supervisor.gpus import detect_gpus

    gpus = detect_gpus(settings)
    if gpus:
        return len(gpus)
    return max(1, len(os.sched_getaffinity(0)))


def place_caches(settings: Settings, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Where jobs' model caches go, as lines for the log (the children's environment gets them
    from :func:`~sandvisor.supervisor.policy.child_environment`; this process's is untouched)."""
    return [f"{name}={value}" for name, value in cache_environment(settings, environ).items()]


def concurrency_modifier_for(host: SupervisorHost, concurrency: int) -> Callable[[int], int]:
    def concurrency_modifier(current: int) -> int:
        # runpod calls this just before each take: the first call holds the first take until
        # the Supervisor (and its base template) is warm.
        host.wait_ready()
        return concurrency

    return concurrency_modifier


def has_test_input(argv: Sequence[str]) -> bool:
    return "--test_input" in argv or any(a.startswith("--test_input=") for a in argv)


def test_input_text(argv: Sequence[str]) -> str | None:
    """The value of ``--test_input`` in ``argv`` (``--test_input X`` or ``--test_input=X``), or
    None when there is none (runpod's own parser reports a flag without a value)."""
    for index, arg in enumerate(argv):
        if arg == "--test_input" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--test_input="):
            return arg.partition("=")[2]
    return None


def lb_requested(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """``--lb``; else ``FLASH_ENDPOINT_TYPE=lb`` unless a ``--test_input`` asks for one job."""
    if "--lb" in argv:
        return True
    return environ.get("FLASH_ENDPOINT_TYPE", "").lower() == "lb" and not has_test_input(argv)


def lb_address(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, int]:
    """``--host``/``--port`` from ``argv``; else ``0.0.0.0`` and ``PORT`` (default 80).

    Raises SettingsError for a port that is not a number from 0 to 65535.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", default=environ.get("PORT") or "80")
    options, _ = parser.parse_known_args(list(argv))
    try:
        port = int(options.port)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise SettingsError(f"invalid port {options.port!r} (--port or PORT)")
    return options.host, port


def serve(argv: Sequence[str]) -> int:
    """Serve as a RunPod worker: HTTP when asked for (see the module), else runpod's queue loop."""
    settings = Settings.from_env()
    for line in place_caches(settings):
        print(f"sandvisor: {line}", file=sys.stderr)
    if lb_requested(argv, os.environ):
        from sandvisor.worker.lb import serve_lb

        host, port = lb_address(argv, os.environ)
        return serve_lb(settings, os.environ, host, port)
    return serve_queue(settings, argv)


def serve_queue(settings: Settings, argv: Sequence[str]) -> int:
    """Start runpod's worker with our handler; ``argv`` are runpod's own flags, untouched."""
    deployed = asyncio.run(DeployedApp.prepare(settings))
    for line in deployed.notes:
        print(f"sandvisor: {line}", file=sys.stderr)
    set_deployed_app(deployed)
    settings = deployed.settings_for(settings)
    host = get_host(settings)
    concurrency = default_concurrency(settings)
    test_input = has_test_input(argv)
    # runpod's --test_input path cannot run a generator handler; /stream needs one.
    streaming = settings.runpod_stream and not test_input

    import runpod
    from runpod.serverless.modules import rp_scale

    from sandvisor.worker.scaler import install_prompt_scaler

    if settings.runpod_prompt_take:
        install_prompt_scaler(rp_scale)
    config: dict[str, Any] = {
        "handler": stream_handler if streaming else handler,
        "concurrency_modifier": concurrency_modifier_for(host, concurrency),
        "return_aggregate_stream": streaming,
    }
    sys.argv = [sys.argv[0], *argv]  # runpod parses sys.argv itself
    code: int = 0
    try:
        runpod.serverless.start(config)
    except SupervisorStartError as exc:
        print(f"sandvisor serve: {exc}", file=sys.stderr)
        code = 1
    except SystemExit as exc:  # --test_input ends with sys.exit(0|1)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        host.close()
    return code
