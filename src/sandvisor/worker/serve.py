"""``sandvisor serve``: runpod-python's worker loop, started with our handler.

``import runpod`` costs about 2.6 s, so it happens only in :func:`serve`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sandvisor.supervisor.policy import cache_environment
from sandvisor.supervisor.settings import Settings
from sandvisor.worker.handler import handler, stream_handler
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


def serve(argv: Sequence[str]) -> int:
    """Start runpod's worker with our handler; ``argv`` are runpod's own flags, untouched."""
    settings = Settings.from_env()
    for line in place_caches(settings):
        print(f"sandvisor: {line}", file=sys.stderr)
    host = get_host(settings)
    concurrency = default_concurrency(settings)
    test_input = "--test_input" in argv or any(a.startswith("--test_input=") for a in argv)
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
