"""``sandvisor serve [runpod flags]``: this process becomes a RunPod serverless worker.

runpod-python parses ``sys.argv`` itself, so its flags (``--test_input``, ``--rp_serve_api``,
``--rp_api_port``, ``--rp_api_host``, ``--rp_log_level``, ...) pass through untouched; ``cli.main``
parses ``serve`` with ``parse_known_args`` for that reason.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sandvisor.cli import EXIT_USAGE


def add_serve_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run as a RunPod serverless worker (runpod's flags pass through)",
        description=(
            "Start runpod-python's worker with sandvisor's handler. Queue mode when "
            "RUNPOD_WEBHOOK_GET_JOB is set; --test_input JSON runs one job and exits; "
            "--rp_serve_api [--rp_api_port N] serves /run, /runsync, /status, /stream locally. "
            "--lb (or FLASH_ENDPOINT_TYPE=lb) serves a load-balanced endpoint over HTTP instead: "
            "/ping, /execute and a deployed app's routes on --host (0.0.0.0) and --port "
            "(PORT, else 80)."
        ),
    )
    parser.set_defaults(handler=serve_command)


def serve_command(options: argparse.Namespace) -> int:
    del options  # runpod reads its own flags from the command line
    from sandvisor.supervisor.errors import InvalidRequest
    from sandvisor.supervisor.intake import parse_json
    from sandvisor.supervisor.settings import SettingsError
    from sandvisor.worker.serve import serve, test_input_text

    argv = sys.argv[1:]
    runpod_args = argv[argv.index("serve") + 1 :] if "serve" in argv else []
    test_input = test_input_text(runpod_args)
    if test_input is not None:  # runpod's own parse would end in a traceback
        try:
            parse_json(test_input, "--test_input")
        except InvalidRequest as exc:
            print(f"sandvisor serve: {exc.summary}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return serve(runpod_args)
    except SettingsError as exc:
        print(f"sandvisor serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
