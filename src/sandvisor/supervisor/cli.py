"""The ``sandvisor`` command.

Imports nothing heavy at module level, so ``sandvisor --help`` answers fast; each command imports
what it needs when it runs. Exit codes: 0 success, 1 the job failed, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2

#: Modules that add subcommands: each has ``add_<name>_command(subparsers)``. Missing ones are
#: skipped, so a command's module can land on its own.
COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("sandvisor.supervisor.cli_run", "add_run_command"),
    ("sandvisor.supervisor.cli_envs", "add_envs_command"),
    ("sandvisor.supervisor.cli_serve", "add_serve_command"),
    ("sandvisor.supervisor.cli_doctor", "add_doctor_command"),
    ("sandvisor.supervisor.cli_request", "add_request_command"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandvisor",
        description="Run runpod-flash FunctionRequests in isolated child processes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, adder in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        getattr(module, adder)(subparsers)
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
