"""shared_sweep.sweep_uids on a tree of its own: what a uid owns goes, links are never followed,
others' files, skipped dirs and dirs the uid cannot search stay, and time is bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandvisor.supervisor.shared_sweep import sweep_uids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

UID, OTHER = 20059, 20058


def owned(path: Path, uid: int, mode: int = 0o600, *, folder: bool = False) -> Path:
    if folder:
        path.mkdir(mode=mode)
    else:
        path.write_text("secret")
    os.chown(path, uid, 20000)
    os.chmod(path, mode)
    return path


def test_what_the_uid_owns_goes_and_nothing_else(tmp_path: Path) -> None:
    place = owned(tmp_path / "tmp", 0, 0o1777, folder=True)
    file = owned(place / "mine", UID)
    tree = owned(place / "mydir", UID, 0o700, folder=True)
    owned(tree / "deep", UID)
    theirs = owned(place / "theirs", OTHER)
    shared = owned(place / "shared", OTHER, 0o1777, folder=True)
    nested = owned(shared / "mine-too", UID)
    closed = owned(place / "closed", 0, 0o700, folder=True)  # the uid could not reach in
    hidden = owned(closed / "mine-but-unreachable", UID)
    kept = owned(place / "store", 0, 0o1777, folder=True)
    in_store = owned(kept / "job-dir", UID)
    outside = owned(tmp_path / "outside", UID)
    (place / "link").symlink_to(tmp_path)  # root's link: never followed
    os.chown(place / "link", 0, 0, follow_symlinks=False)

    sweep = sweep_uids([UID], 20000, places=[place], skip=[kept], sysvipc=False)

    assert not file.exists() and not tree.exists() and not nested.exists()
    assert theirs.exists() and hidden.exists() and in_store.exists() and outside.exists()
    assert sorted(sweep.removed) == sorted(map(str, [file, tree, nested]))
    assert not sweep.failed and not sweep.out_of_time


def test_a_sweep_out_of_time_says_so(tmp_path: Path) -> None:
    place = owned(tmp_path / "tmp", 0, 0o1777, folder=True)
    mine = owned(place / "mine", UID)
    sweep = sweep_uids([UID], places=[place], budget_s=-1.0, sysvipc=False)
    assert sweep.out_of_time and mine.exists()


def test_a_missing_place_is_no_error(tmp_path: Path) -> None:
    sweep = sweep_uids([UID], places=[tmp_path / "absent"], sysvipc=False)
    assert sweep.removed == [] and sweep.failed == []
