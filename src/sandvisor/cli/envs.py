"""``sandvisor envs list|gc|rm KEY``: look at and prune the dependency environment store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from sandvisor.cli import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE


def add_envs_command(subparsers: Any) -> None:
    parser = subparsers.add_parser("envs", help="list, collect or remove dependency environments")
    actions = parser.add_subparsers(dest="envs_action", metavar="ACTION")

    listing = actions.add_parser("list", help="key, requirements, size and last use of each env")
    listing.add_argument("--json", action="store_true", help="one JSON object per env")
    listing.set_defaults(handler=list_command)

    gc = actions.add_parser(
        "gc", help="remove least recently used envs beyond SANDVISOR_ENV_MAX_COUNT/_BYTES"
    )
    gc.set_defaults(handler=gc_command)

    remove = actions.add_parser("rm", help="remove one env (refused while a job uses it)")
    remove.add_argument("key", help="the env's key, as `envs list` shows it")
    remove.set_defaults(handler=remove_command)

    parser.set_defaults(handler=lambda _options: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _store() -> Any:
    # Imported here: `sandvisor --help` must not pay for pydantic and packaging.
    from sandvisor.supervisor.envs import EnvStore
    from sandvisor.supervisor.settings import Settings

    return EnvStore(Settings.from_env())


def list_command(options: argparse.Namespace) -> int:
    from sandvisor.supervisor.watchdog import format_bytes

    store = _store()
    envs = store.list()
    if options.json:
        for info in envs:
            print(
                json.dumps(
                    {
                        "key": info.key,
                        "requirements": list(info.requirements),
                        "size_bytes": info.size_bytes,
                        "last_used": info.last_used,
                        "created": info.created,
                        "in_use": info.in_use,
                    }
                )
            )
        return EXIT_OK
    if not envs:
        print(f"no environments in {store.root}", file=sys.stderr)
        return EXIT_OK
    print(f"{'KEY':<24}  {'SIZE':>9}  {'LAST USED':<19}  {'IN USE':<6}  REQUIREMENTS")
    for info in envs:
        print(
            f"{info.key:<24}  {format_bytes(info.size_bytes):>9}  "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.last_used)):<19}  "
            f"{'yes' if info.in_use else 'no':<6}  {' '.join(info.requirements)}"
        )
    return EXIT_OK


def gc_command(options: argparse.Namespace) -> int:
    from sandvisor.supervisor.watchdog import format_bytes

    removed = _store().gc()
    for info in removed:
        print(
            f"removed {info.key} ({format_bytes(info.size_bytes)}): {' '.join(info.requirements)}"
        )
    print(f"{len(removed)} environment(s) removed", file=sys.stderr)
    return EXIT_OK


def remove_command(options: argparse.Namespace) -> int:
    from sandvisor.supervisor.errors import EnvError
    from sandvisor.supervisor.watchdog import format_bytes

    try:
        info = _store().remove(options.key)
    except EnvError as exc:
        print(f"sandvisor envs rm: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    print(f"removed {info.key} ({format_bytes(info.size_bytes)})")
    return EXIT_OK
