"""Deployed Flash apps: find the module that defines a requested function or class.

``flash build`` writes ``flash_manifest.json`` at the root of the app it packs (see
``runpod_flash.cli.commands.build_utils.manifest.ManifestBuilder.build``)::

    {"version": "1.0", "project_name": ..., "python_version": ...,
     "resources": {"<resource>": {"module_path": "workers.gpu",
                                  "functions": [{"name": "f", "module": "workers.gpu",
                                                 "is_async": false, "is_class": false}, ...],
                                  ...}},
     "function_registry": {"f": "<resource>", ...}}

A request that carries neither ``function_code`` nor ``class_code`` names a function (or class)
of that app: ``function_registry`` gives its resource, the resource's ``functions`` entry gives
its dotted module, and the child imports that module with the app directory on ``sys.path``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandvisor.protocol.models import FunctionRequest
from sandvisor.supervisor.errors import DeployedAppError

MANIFEST_NAME = "flash_manifest.json"

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class DeployedEntry:
    """Where a deployed function lives: import ``module`` with ``sys_path`` first on the path."""

    module: str
    sys_path: Path


def requested_name(request: FunctionRequest) -> str:
    """The name the manifest is searched for: the class for class calls, else the function."""
    name = request.class_name if request.execution_type == "class" else request.function_name
    if not name:
        raise DeployedAppError(
            f"request has no code and no {request.execution_type} name to look up in the app"
        )
    return name


def load_manifest(app_dir: Path) -> dict[str, Any]:
    path = app_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeployedAppError(
            f"request has no function_code/class_code and there is no deployed app: "
            f"{path} not found (set SANDVISOR_APP_DIR to the app's directory)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployedAppError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DeployedAppError(f"{path} is not a JSON object")
    return data


def module_of(manifest: dict[str, Any], name: str, where: Path) -> str:
    """The dotted module of ``name``, following function_registry -> resource -> functions."""
    registry = manifest.get("function_registry")
    resources = manifest.get("resources")
    if not isinstance(registry, dict) or not isinstance(resources, dict):
        raise DeployedAppError(f"{where} has no function_registry/resources maps")
    resource_name = registry.get(name)
    if resource_name is None:
        known = ", ".join(sorted(str(key) for key in registry)) or "none"
        raise DeployedAppError(
            f"{name!r} is not a function of the deployed app ({where}); known: {known}"
        )
    resource = resources.get(resource_name)
    if not isinstance(resource, dict):
        raise DeployedAppError(f"{where}: {name!r} maps to resource {resource_name!r}, not listed")
    for function in resource.get("functions") or []:
        if isinstance(function, dict) and function.get("name") == name and function.get("module"):
            return str(function["module"])
    # Manifests list every function of a resource; fall back to the resource's own module
    # only for hand-written manifests that omit the per-function entry.
    module = resource.get("module_path")
    if not module:
        raise DeployedAppError(f"{where}: resource {resource_name!r} names no module for {name!r}")
    return str(module)


def check_module_file(app_dir: Path, module: str) -> None:
    """Fail early, in the supervisor, when the module named by the manifest is not shipped."""
    if not _DOTTED.match(module):
        raise DeployedAppError(f"manifest module {module!r} is not a dotted Python module name")
    relative = Path(*module.split("."))
    if not (
        (app_dir / relative).with_suffix(".py").is_file()
        or (app_dir / relative / "__init__.py").is_file()
    ):
        raise DeployedAppError(f"manifest module {module!r} has no source under {app_dir}")


def resolve_deployed(app_dir: Path, request: FunctionRequest) -> DeployedEntry:
    """The module to import for a request without code; :class:`DeployedAppError` otherwise."""
    name = requested_name(request)
    manifest = load_manifest(app_dir)
    module = module_of(manifest, name, app_dir / MANIFEST_NAME)
    check_module_file(app_dir, module)
    return DeployedEntry(module=module, sys_path=app_dir.resolve())
