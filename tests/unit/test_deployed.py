"""The worker's start with a deployed app, and the choice between queue and HTTP serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.flash_app import flash_environ, make_artifact
from tests.helpers import make_settings

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.settings import SettingsError
from sandvisor.worker import handler as handler_module
from sandvisor.worker.deployed import DeployedApp
from sandvisor.worker.serve import lb_address, lb_requested


async def test_a_flash_deployment_is_unpacked_and_routed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", app_dir=tmp_path / "app")
    app = await DeployedApp.prepare(settings, flash_environ("api", make_artifact(tmp_path)))
    assert app.error is None
    assert app.router is not None and app.router.resource == "api"
    assert (tmp_path / "app" / "flash_manifest.json").is_file()
    assert app.notes[0].startswith("unpacked ")
    assert await app.preflight({"function_name": "add"}) is None  # api's own: runs here


async def test_unpacking_can_be_turned_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", app_dir=tmp_path / "app")
    environ = flash_environ("api", tmp_path / "missing.tgz", FLASH_DISABLE_UNPACK="true")
    app = await DeployedApp.prepare(settings, environ)
    assert app.error is None and not (tmp_path / "app").exists()


async def test_a_plain_worker_has_nothing_to_do(tmp_path: Path) -> None:
    app = await DeployedApp.prepare(make_settings(tmp_path / "home"), {})
    assert (app.error, app.router, app.notes) == (None, None, [])
    assert await app.preflight({"function_name": "f", "function_code": "def f(): 1"}) is None


async def test_a_bad_artifact_answers_every_request(tmp_path: Path) -> None:
    bad = tmp_path / "artifact.tar.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    settings = make_settings(tmp_path / "home", app_dir=tmp_path / "app")
    app = await DeployedApp.prepare(settings, flash_environ("api", bad))
    assert app.router is None and app.notes[0].startswith("error: the deployed app cannot")
    for request in ({"function_name": "add"}, {"function_name": "f", "function_code": "x"}):
        answer = await app.preflight(request)
        assert answer is not None and answer.error_type is ErrorType.DEPLOYMENT
        assert (answer.error or "").startswith("deployed app unavailable: cannot unpack")


async def test_the_queue_handler_answers_with_the_deployed_apps_failure(tmp_path: Path) -> None:
    bad = tmp_path / "artifact.tar.gz"
    bad.write_bytes(b"not a tar")
    settings = make_settings(tmp_path / "home", app_dir=tmp_path / "app")
    handler_module.set_deployed_app(await DeployedApp.prepare(settings, flash_environ("api", bad)))
    try:
        answer = await handler_module.handler({"id": "j1", "input": {"function_name": "add"}})
        streamed = [item async for item in handler_module.stream_handler({"id": "j2", "input": {}})]
    finally:
        handler_module.set_deployed_app(None)
    assert answer["success"] is False and answer["error_type"] == "deployment"
    assert [item["error_type"] for item in streamed] == ["deployment"]


def test_lb_mode_and_address() -> None:
    assert lb_requested(["--lb"], {})
    assert lb_requested([], {"FLASH_ENDPOINT_TYPE": "lb"})
    assert not lb_requested(["--rp_serve_api"], {"FLASH_ENDPOINT_TYPE": "qb"})
    # one job on an LB endpoint's image: the one-shot run, unless --lb says otherwise
    assert not lb_requested(["--test_input", "{}"], {"FLASH_ENDPOINT_TYPE": "lb"})
    assert not lb_requested(["--test_input={}"], {"FLASH_ENDPOINT_TYPE": "lb"})
    assert lb_address([], {}) == ("0.0.0.0", 80)
    assert lb_address([], {"PORT": "8080"}) == ("0.0.0.0", 8080)
    assert lb_address(["--lb", "--host", "127.0.0.1", "--port", "9"], {"PORT": "1"}) == (
        "127.0.0.1",
        9,
    )
    for port in ("http", "70000"):
        with pytest.raises(SettingsError, match="invalid port"):
            lb_address(["--port", port], {})


async def test_a_flash_deployment_preloads_runpod(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", app_dir=tmp_path / "app", preload=["json"])
    app = await DeployedApp.prepare(settings, flash_environ("api", make_artifact(tmp_path)))
    assert app.settings_for(settings).preload == ["json", "runpod"]
    assert app.settings_for(app.settings_for(settings)).preload == ["json", "runpod"]
    plain = await DeployedApp.prepare(settings, {})
    assert plain.settings_for(settings) is settings


async def test_the_flash_preload_is_a_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", app_dir=tmp_path / "app", flash_preload="")
    app = await DeployedApp.prepare(settings, flash_environ("api", make_artifact(tmp_path)))
    assert app.settings_for(settings) is settings
