"""``sandvisor request FILE.py:NAME``: print a FunctionRequest for a local function or class.

The code goes in as runpod-flash's client sends it (``stubs/live_serverless.get_function_source``
and ``execute_class.extract_class_code_simple``): only the definition, decorators dropped,
dedented, so imports belong inside the function. Local modules the definition imports (files
beside FILE.py, transitively) travel in ``modules``, as runpod-flash ships them. The file is
parsed, never imported: it may import packages that only the job's dependencies provide.

Arguments are JSON on the command line; they are sent as base64 cloudpickle, runpod-flash's
default, unless ``--format json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from sandvisor.cli import EXIT_OK, EXIT_USAGE


class RequestBuildError(Exception):
    """The command line does not describe a request that can be built; says why in one line."""


def add_request_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "request",
        help="print a FunctionRequest (a RunPod job input) for a function in a local file",
    )
    parser.add_argument("target", metavar="FILE.py:NAME", help="a top-level function or class")
    parser.add_argument("--dep", action="append", default=[], metavar="SPEC", help="dependency")
    parser.add_argument(
        "--system-dep", action="append", default=[], metavar="PKG", help="system package"
    )
    parser.add_argument("--arg", action="append", default=[], metavar="JSON", help="argument")
    parser.add_argument(
        "--kwarg", action="append", default=[], metavar="K=JSON", help="keyword argument"
    )
    parser.add_argument("--method", default="__call__", help="for a class: the method to call")
    parser.add_argument(
        "--init-arg", action="append", default=[], metavar="JSON", help="constructor argument"
    )
    parser.add_argument(
        "--init-kwarg",
        action="append",
        default=[],
        metavar="K=JSON",
        help="constructor keyword argument",
    )
    parser.add_argument(
        "--format",
        choices=("cloudpickle", "json"),
        default="cloudpickle",
        help="how arguments and the result travel (default: cloudpickle, as runpod-flash)",
    )
    parser.add_argument(
        "--bare", action="store_true", help="print the request alone, not as a job {'input': ...}"
    )
    parser.set_defaults(handler=request_command)


def request_command(options: argparse.Namespace) -> int:
    try:
        request = build_request(options)
    except RequestBuildError as exc:
        print(f"sandvisor request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(request if options.bare else {"input": request}, indent=2))
    return EXIT_OK


def build_request(options: argparse.Namespace) -> dict[str, Any]:
    from sandvisor.protocol.codec import encode_value
    from sandvisor.protocol.models import FunctionRequest

    path, name = split_target(options.target)
    text = read_source(path)
    node = find_definition(text, name, path)
    code = definition_source(text, node)
    encode = encode_value if options.format == "cloudpickle" else (lambda value: value)
    args = [encode(value) for value in parse_values(options.arg, "--arg")]
    kwargs = {key: encode(value) for key, value in parse_pairs(options.kwarg, "--kwarg").items()}
    fields: dict[str, Any] = {
        "dependencies": options.dep or None,
        "system_dependencies": options.system_dep or None,
        "modules": local_modules(code, path.parent),
        "serialization_format": options.format,
    }
    if isinstance(node, ast.ClassDef):
        fields |= {
            "execution_type": "class",
            "class_name": name,
            "class_code": code,
            "method_name": options.method,
            "constructor_args": [encode(v) for v in parse_values(options.init_arg, "--init-arg")],
            "constructor_kwargs": {
                key: encode(value)
                for key, value in parse_pairs(options.init_kwarg, "--init-kwarg").items()
            },
        }
    else:
        fields |= {"function_name": name, "function_code": code}
    request = FunctionRequest(args=args, kwargs=kwargs, **fields)
    return request.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
        "args": args,
        "kwargs": kwargs,
        "serialization_format": options.format,
    }


def split_target(target: str) -> tuple[Path, str]:
    file_part, sep, name = target.rpartition(":")
    if not sep or not file_part or not name.isidentifier():
        raise RequestBuildError(f"expected FILE.py:NAME, got {target!r}")
    return Path(file_part), name


def read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RequestBuildError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RequestBuildError(f"cannot read {path}: not UTF-8 ({exc.reason})") from None


def find_definition(text: str, name: str, path: Path) -> ast.stmt:
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise RequestBuildError(f"{path}:{exc.lineno}: {exc.msg}") from None
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, kinds) and node.name == name:
            return node
    found = sorted(node.name for node in tree.body if isinstance(node, kinds))
    raise RequestBuildError(
        f"no top-level function or class {name!r} in {path}; found: {', '.join(found) or 'none'}"
    )


def definition_source(text: str, node: ast.stmt) -> str:
    """The definition from its ``def``/``class`` line (decorators dropped), dedented."""
    lines = text.splitlines()
    end = node.end_lineno or len(lines)
    return textwrap.dedent("\n".join(lines[node.lineno - 1 : end])) + "\n"


def parse_values(raw: list[str], flag: str) -> list[Any]:
    """Each of ``raw`` as JSON (as the intake reads it); :class:`RequestBuildError` naming the
    flag and the value (its first 40 characters) for one Python's json cannot read."""
    from sandvisor.supervisor.errors import InvalidRequest
    from sandvisor.supervisor.intake import parse_json

    values = []
    for item in raw:
        shown = repr(item) if len(item) <= 40 else repr(item[:40]) + "..."
        try:
            values.append(parse_json(item, f"{flag} {shown}"))
        except InvalidRequest as exc:
            raise RequestBuildError(exc.summary) from None
    return values


def parse_pairs(raw: list[str], flag: str) -> dict[str, Any]:
    pairs = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise RequestBuildError(f"{flag} expects NAME=JSON, got {item!r}")
        pairs[key] = parse_values([value], f"{flag} {key}")[0]
    return pairs


# -- local modules -------------------------------------------------------------------------------


def imported_names(source: str) -> set[str]:
    """Absolute module names imported anywhere in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_files(dotted: str, root: Path) -> list[Path]:
    """The local files behind ``dotted`` (its package ``__init__``s included), or none."""
    parts = dotted.split(".")
    files = []
    for depth in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
            break
        else:
            break
    return files


def local_modules(code: str, root: Path) -> dict[str, str]:
    """Every local file ``code`` imports, transitively, as {relative path: source}."""
    modules: dict[str, str] = {}
    pending = [code]
    while pending:
        for name in sorted(imported_names(pending.pop())):
            for file in module_files(name, root):
                key = file.relative_to(root).as_posix()
                if key not in modules:
                    modules[key] = file.read_text(encoding="utf-8")
                    pending.append(modules[key])
    return modules
