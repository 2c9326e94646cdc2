"""DirRemover: working dirs go on a background thread; close() waits for what was queued."""

from __future__ import annotations

import threading
from pathlib import Path

from sandvisor.supervisor.cleanup import DirRemover


async def test_dirs_are_removed_and_close_waits(tmp_path: Path) -> None:
    remover = DirRemover()
    full = tmp_path / "full"
    (full / "sub").mkdir(parents=True)
    (full / "sub" / "file.txt").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    remover.remove(full)
    remover.remove(empty)
    remover.remove(tmp_path / "never-made")  # not there: fine
    await remover.close()
    assert not full.exists() and not empty.exists()
    assert not any(t.name == "sandvisor-rmdir" for t in threading.enumerate())


async def test_close_without_work_and_reuse_after_close(tmp_path: Path) -> None:
    remover = DirRemover()
    await remover.close()
    again = tmp_path / "again"
    again.mkdir()
    remover.remove(again)
    await remover.close()
    assert not again.exists()
