"""``sandvisor run FILE|-``: run one request locally, logs live on stderr, result on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from sandvisor.cli import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE

COLORS = {
    "stdout": "",
    "stderr": "\033[33m",
    "system": "\033[36m",
    "DEBUG": "\033[2m",
    "INFO": "\033[32m",
    "WARNING": "\033[33m",
    "ERROR": "\033[31m",
    "CRITICAL": "\033[1;31m",
}
RESET = "\033[0m"


class InputError(Exception):
    """The request file cannot be read or is not a request."""


def add_run_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a FunctionRequest (bare, or a RunPod job {'input': {...}}) in an isolated child",
    )
    parser.add_argument("file", help="request JSON file, or - for standard input")
    parser.add_argument(
        "--json", action="store_true", help="print the whole FunctionResponse as JSON"
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="color the live log (auto: when stderr is a terminal and NO_COLOR is not set)",
    )
    parser.set_defaults(handler=run_command)


def load_request(source: str, stdin: TextIO = sys.stdin) -> dict[str, Any]:
    """The request in file ``source`` (``-``: ``stdin``): bare, or a RunPod job's ``input``.

    Raises :class:`InputError`, one line, when the file cannot be read, is not JSON (as
    ``intake.parse_json`` decides: not UTF-8, too deep, an integer too long), is not an object,
    or is a job whose ``input`` is not an object. The request's fields are checked later, by
    the Supervisor, as at every entry point.
    """
    from sandvisor.supervisor.errors import InvalidRequest
    from sandvisor.supervisor.intake import job_input, json_type, parse_json

    try:
        data: str | bytes = stdin.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # a text stdin that is not UTF-8
        raise InputError(f"{source} is not JSON ({exc})") from None
    try:
        document = parse_json(data, source)
    except InvalidRequest as exc:
        raise InputError(exc.summary) from None
    try:
        document = job_input(document)
    except InvalidRequest as exc:
        raise InputError(f"{source}: {exc.summary}") from None
    if not isinstance(document, dict):
        raise InputError(f"{source} must hold a JSON object, not {json_type(document)}")
    return dict(document)


def use_color(choice: str, stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """``--color``: ``always``, ``never``, or ``auto``: a terminal, unless ``NO_COLOR`` is set
    to anything but the empty string (https://no-color.org; an explicit ``always`` wins)."""
    if choice != "auto":
        return choice == "always"
    return not environ.get("NO_COLOR") and stream.isatty()


class LogPrinter:
    """Live log lines: time, stream or level, and color on a terminal; plain when piped."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self._out = out
        self._color = color

    def __call__(self, event: Any) -> None:
        label = event.level if event.stream == "log" else event.stream
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        for line in event.text.splitlines():
            if self._color:
                tint = COLORS.get(label, "")
                self._out.write(f"\033[2m{stamp}\033[0m {tint}{label:<7}{RESET} {line}\n")
            else:
                self._out.write(f"{stamp} {label:<7} {line}\n")
        self._out.flush()


def run_command(options: argparse.Namespace) -> int:
    try:
        request = load_request(options.file)
    except InputError as exc:
        print(f"sandvisor run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    color = use_color(options.color, sys.stderr)
    import asyncio

    response = asyncio.run(_run(request, LogPrinter(sys.stderr, color), options.json))
    return _print_response(response, options.json)


async def _run(request: dict[str, Any], printer: LogPrinter, as_json: bool) -> Any:
    from sandvisor.protocol.models import FunctionResponse
    from sandvisor.supervisor.core import Supervisor
    from sandvisor.supervisor.settings import Settings

    settings = Settings.from_env(templates=False)  # one job: a template would only cost time
    async with Supervisor(settings) as supervisor:
        async for item in supervisor.stream(request, display=not as_json):
            if isinstance(item, FunctionResponse):
                return item
            printer(item)
    raise RuntimeError("the job ended without a response")


def _print_response(response: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(response.to_wire(), indent=2))
    elif response.success:
        if response.result_display is not None:
            print(response.result_display)
    else:
        print(f"sandvisor run: job failed: {response.error}", file=sys.stderr)
    return EXIT_OK if response.success else EXIT_JOB_FAILED
