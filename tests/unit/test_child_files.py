"""The child's cheap stand-ins for the import system's and io's own work give the same results."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from sandvisor.sandbox_child.job_module import _bytecode_path, new_module
from sandvisor.sandbox_child.workspace import write_text


@pytest.mark.parametrize(
    "path",
    ["/jobs/abc.1234/function_code.py", "/a b/class_code.py", "relative/dir/m.py", "/d/x.y.py"],
)
def test_bytecode_path_is_what_importlib_names(path: str) -> None:
    assert _bytecode_path(path) == importlib.util.cache_from_source(path)


def test_new_module_has_what_module_from_spec_gives(tmp_path: Path) -> None:
    path = str(tmp_path / "function_code.py")
    spec = importlib.util.spec_from_file_location("function_code", path)
    assert spec is not None
    reference = importlib.util.module_from_spec(spec)
    module = new_module("function_code_under_test", path)
    try:
        for attr in ("__file__", "__cached__", "__package__"):
            assert getattr(module, attr) == getattr(reference, attr)
        assert module.__spec__.origin == reference.__spec__.origin
        assert module.__spec__.has_location and module.__spec__.cached == reference.__cached__
        assert module.__spec__.submodule_search_locations is None
        assert type(module.__loader__) is type(reference.__loader__)
    finally:
        import sys

        import cloudpickle

        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules["function_code_under_test"]


@pytest.mark.parametrize(
    "text",
    ["", "print('hi')\n", "s = 'ünïcödé ✓'\n", "x = 1\n" * 100_000],
    ids=["empty", "ascii", "non-ascii", "large"],
)
def test_write_text_writes_utf8_as_open_does(tmp_path: Path, text: str) -> None:
    target = tmp_path / "m.py"
    target.write_text("old contents that are longer than some of the new ones\n")
    write_text(str(target), text)
    assert target.read_text(encoding="utf-8") == text
    reference = tmp_path / "ref.py"
    with open(reference, "w", encoding="utf-8") as handle:
        handle.write(text)
    assert os.stat(target).st_mode == os.stat(reference).st_mode
