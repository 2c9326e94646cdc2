"""``sandvisor``'s parser and entry point: one subcommand per module of this package.

Exit codes: 0 success, 1 the job failed, 2 bad usage or unreadable input (``sandvisor.cli``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sandvisor.cli import EXIT_USAGE, doctor, envs, request, run, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandvisor",
        description="Run runpod-flash FunctionRequests in isolated child processes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.add_run_command(subparsers)
    envs.add_envs_command(subparsers)
    serve.add_serve_command(subparsers)
    doctor.add_doctor_command(subparsers)
    request.add_request_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["serve"]:
        # runpod parses sys.argv itself; its flags pass through untouched.
        options, _ = parser.parse_known_args(argv)
    else:
        options = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(options, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(options)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
