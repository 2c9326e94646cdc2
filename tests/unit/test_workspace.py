"""The job's own code written into its dir (``sandbox_child.workspace``), in this process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sandvisor.sandbox_child import workspace
from sandvisor.sandbox_child.workspace import ModulePathError, write_job_source


def test_the_source_is_written_as_a_module_file_and_again_on_a_retry(tmp_path: Path):
    first = write_job_source(str(tmp_path), "function_code", "A = 1\n", {"util.py": ""})
    again = write_job_source(str(tmp_path), "function_code", "A = 2\n", {"util.py": ""})
    assert first == again == str(tmp_path / "function_code.py")
    assert Path(again).read_text() == "A = 2\n"  # a retried job finds its first attempt's file


@pytest.mark.parametrize(
    "name", ["function_code.py", "function_code/__init__.py", "function_code/deep/x.py"]
)
def test_a_module_that_would_shadow_the_jobs_code_is_refused(tmp_path: Path, name: str):
    with pytest.raises(ModulePathError, match="takes the name of the request's own code"):
        write_job_source(str(tmp_path), "function_code", "A = 1\n", {name: ""})
    assert not (tmp_path / "function_code.py").exists()


@pytest.mark.parametrize("name", ["function_code_helpers.py", "lib/function_code.py"])
def test_similar_names_elsewhere_are_fine(tmp_path: Path, name: str):
    write_job_source(str(tmp_path), "function_code", "A = 1\n", {name: ""})
    assert (tmp_path / "function_code.py").exists()


def test_outside_the_child_runtime_no_path_entry_is_taken_away():
    # Imported by pytest (and by the supervisor), not run as ``python -m sandvisor.sandbox_child``:
    # there is no launch entry, and sys.path stays as it is.
    assert workspace._launch_entry() is None
    before = list(sys.path)
    workspace.drop_launch_entry()
    assert sys.path == before
