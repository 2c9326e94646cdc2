"""The child's side of learned preloads: what a job reports it imported, and what a template
finds wrong with a preload (it failed, printed, warned, or left a thread running)."""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandvisor.sandbox_child import imports
from sandvisor.sandbox_child.preloading import preload, preload_threads


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for the test's modules; they leave sys.modules after."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.fixture
def template_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process plays a template that forked a job child: its modules now are the template's."""
    monkeypatch.setattr(imports, "_TEMPLATE_MODULES", None)
    imports.mark_template()


def test_outside_a_template_nothing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imports, "_TEMPLATE_MODULES", None)
    assert imports.imported_since_template("/nowhere") is None


@pytest.mark.usefixtures("template_snapshot")
def test_a_job_reports_the_public_top_level_modules_it_imported(
    module_dir: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "job"
    (workdir / "ownpkg").mkdir(parents=True)
    for name in ("libone", "_private_ext", "pkgtwo/__init__", "pkgtwo/sub"):
        (module_dir / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (module_dir / f"{name}.py").write_text("")
    (workdir / "jobhelper.py").write_text("")
    (workdir / "ownpkg" / "__init__.py").write_text("")
    sys.path.insert(0, str(workdir))
    try:
        for name in ("libone", "_private_ext", "pkgtwo.sub", "jobhelper", "ownpkg"):
            __import__(name)
        reported = imports.imported_since_template(str(workdir))
    finally:
        sys.path.remove(str(workdir))
    # pytest's own fixtures may import more; of the test's modules, these two count
    ours = {"libone", "_private_ext", "pkgtwo", "jobhelper", "ownpkg"}
    assert [name for name in reported or [] if name in ours] == ["libone", "pkgtwo"]


@pytest.mark.usefixtures("template_snapshot")
def test_a_report_is_capped(module_dir: Path) -> None:
    for index in range(imports.MAX_REPORTED + 5):
        (module_dir / f"many{index:03d}.py").write_text("")
        __import__(f"many{index:03d}")
    reported = imports.imported_since_template("/nowhere")
    assert reported is not None and len(reported) == imports.MAX_REPORTED


#: ``python -W`` unset, not in ``__main__``: what ``warnings.filters`` holds at start, in the
#: order they apply (https://docs.python.org/3/library/warnings.html#default-warning-filter).
PYTHON_DEFAULT_FILTERS = [
    ("ignore", ResourceWarning),
    ("ignore", ImportWarning),
    ("ignore", PendingDeprecationWarning),
    ("ignore", DeprecationWarning),
]


@pytest.mark.parametrize(
    ("code", "failed", "noisy"),
    [
        ("X = 1\n", None, None),
        ("raise ImportError('no backend')\n", "ImportError: no backend", None),
        ("print('hello from import')\n", None, "it writes 18 bytes of output on import"),
        (
            "import os\nos.write(2, b'native warning\\n')\n",
            None,
            "it writes 15 bytes of output on import",
        ),
        (
            "import warnings\nwarnings.warn('old api', UserWarning)\n",
            None,
            "it warns on import (UserWarning: old api)",
        ),
        (
            "import warnings\nwarnings.warn('old api', DeprecationWarning)\n",
            None,
            None,  # hidden by the default filters: a job importing it would not show it either
        ),
    ],
    ids=["clean", "fails", "prints", "writes-fd-2", "warns", "warning-filtered-out"],
)
def test_a_preload_that_fails_or_makes_output_is_reported(
    module_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    failed: str | None,
    noisy: str | None,
) -> None:
    (module_dir / "candidate.py").write_text(code)
    # As in a template: sys.stdout and sys.stderr write to fds 1 and 2 (pytest's do not)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        monkeypatch.setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115
    with warnings.catch_warnings():
        # Python's own default filters, not pytest's (which show every warning)
        warnings.resetwarnings()
        for action, category in PYTHON_DEFAULT_FILTERS:
            warnings.simplefilter(action, category)
        failures, noises = preload(["candidate"])
    assert failures.get("candidate") == failed
    assert noises.get("candidate") == noisy


def test_a_thread_left_running_is_named() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="preload-watcher", daemon=True)
    thread.start()
    try:
        assert "preload-watcher" in preload_threads()
    finally:
        stop.set()
        thread.join()
