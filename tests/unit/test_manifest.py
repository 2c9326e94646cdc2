"""Deployed-app lookup against manifests written by runpod-flash's own ManifestBuilder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runpod_flash.cli.commands.build_utils.manifest import ManifestBuilder
from runpod_flash.cli.commands.build_utils.scanner import RemoteFunctionMetadata

from sandvisor.protocol.models import FunctionRequest
from sandvisor.supervisor.errors import DeployedAppError
from sandvisor.supervisor.manifest import DeployedEntry, resolve_deployed


def _meta(app: Path, name: str, module: str, resource: str, is_class: bool = False):
    return RemoteFunctionMetadata(
        function_name=name,
        module_path=module,
        resource_config_name=resource,
        resource_type="LiveServerless",
        is_async=False,
        is_class=is_class,
        file_path=app / (module.replace(".", "/") + ".py"),
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "workers" / "gpu.py").write_text("def embed(x):\n    return x\n")
    (tmp_path / "cpu.py").write_text("class Model:\n    def __call__(self):\n        return 1\n")
    functions = [
        _meta(tmp_path, "embed", "workers.gpu", "gpu_worker"),
        _meta(tmp_path, "Model", "cpu", "cpu_worker", is_class=True),
    ]
    manifest = ManifestBuilder("demo", functions, build_dir=tmp_path).build()
    (tmp_path / "flash_manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_function_resolves_to_its_module(app: Path) -> None:
    request = FunctionRequest(function_name="embed")
    assert resolve_deployed(app, request) == DeployedEntry("workers.gpu", app.resolve())


def test_class_resolves_by_class_name(app: Path) -> None:
    request = FunctionRequest(execution_type="class", class_name="Model")
    assert resolve_deployed(app, request).module == "cpu"


def test_unknown_name_lists_the_known_ones(app: Path) -> None:
    with pytest.raises(DeployedAppError, match=r"'nope' is not a function .* known: Model, embed"):
        resolve_deployed(app, FunctionRequest(function_name="nope"))


def test_missing_manifest_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DeployedAppError, match="SANDVISOR_APP_DIR"):
        resolve_deployed(tmp_path, FunctionRequest(function_name="embed"))


def test_module_not_shipped_is_reported(app: Path) -> None:
    (app / "workers" / "gpu.py").unlink()
    with pytest.raises(DeployedAppError, match=r"'workers\.gpu' has no source"):
        resolve_deployed(app, FunctionRequest(function_name="embed"))


def test_broken_manifest_is_one_line(app: Path) -> None:
    (app / "flash_manifest.json").write_text("{not json")
    with pytest.raises(DeployedAppError, match="cannot read") as info:
        resolve_deployed(app, FunctionRequest(function_name="embed"))
    assert "\n" not in str(info.value)
