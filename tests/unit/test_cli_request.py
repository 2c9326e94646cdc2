"""``sandvisor request``: the request runpod-flash's own client would send for the same function."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import cloudpickle
import pytest
from runpod_flash.protos.remote_execution import FunctionRequest as FlashRequest
from runpod_flash.stubs.live_serverless import get_function_source

from sandvisor.cli.main import main

SOURCE = """\
import functools


def traced(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@traced
def area(radius, digits=3):
    from geometry.shapes import circle_area
    return round(circle_area(radius), digits)


class Counter:
    def __init__(self, start=0):
        self.value = start

    def add(self, amount):
        self.value += amount
        return self.value
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "geometry").mkdir()
    (tmp_path / "geometry" / "__init__.py").write_text("")
    (tmp_path / "geometry" / "shapes.py").write_text(
        "import math\n\ndef circle_area(r):\n    return math.pi * r ** 2\n"
    )
    (tmp_path / "app.py").write_text(SOURCE)
    return tmp_path


def request(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["request", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_function_code_is_what_runpod_flash_extracts(app: Path, capsys) -> None:
    job = request(capsys, f"{app}/app.py:area", "--arg", "2", "--kwarg", "digits=2", "--dep", "x")
    spec = importlib.util.spec_from_file_location("app_under_test", app / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flash_source, _ = get_function_source(module.area)
    sent = job["input"]
    assert sent["function_code"].rstrip() == flash_source.rstrip()
    FlashRequest(**sent)  # runpod-flash accepts it as its own
    assert [cloudpickle.loads(base64.b64decode(a)) for a in sent["args"]] == [2]
    assert cloudpickle.loads(base64.b64decode(sent["kwargs"]["digits"])) == 2
    assert sent["dependencies"] == ["x"]
    assert set(sent["modules"]) == {"geometry/__init__.py", "geometry/shapes.py"}


def test_a_class_with_json_arguments(app: Path, capsys) -> None:
    sent = request(
        capsys,
        f"{app}/app.py:Counter",
        "--method=add",
        "--arg=2",
        "--init-kwarg=start=40",
        "--format=json",
        "--bare",
    )
    assert sent["execution_type"] == "class"
    assert sent["class_code"].startswith("class Counter:")
    assert sent["constructor_kwargs"] == {"start": 40}
    assert sent["args"] == [2]
    assert "modules" not in sent  # nothing local imported


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nowhere.py:f"], "cannot read nowhere.py"),
        (["{app}/app.py:nope"], "no top-level function or class 'nope'"),
        (["{app}/app.py:area", "--arg", "{bad"], "--arg '{bad' is not JSON"),
        (["{app}/app.py:area", "--arg", "1" + "0" * 5000], "(4300 digits)"),
        (["{app}/app.py:area", "--arg", "[" * 5000 + "]" * 5000], "nested too deep"),
        (["{app}/app.py:area", "--kwarg", "x=[" + "]" * 2], "--kwarg x '[]]' is not JSON"),
        (["{app}/app.py:area", "--kwarg", "2"], "--kwarg expects NAME=JSON"),
        (["app.py"], "expected FILE.py:NAME"),
    ],
)
def test_errors_are_one_line(app: Path, capsys, argv: list[str], message: str) -> None:
    assert main(["request", *(a.replace("{app}", str(app)) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
