"""The identity pool's logic, with the process table injected: who gets which uid, and when a
returned uid may go out again."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from sandvisor.supervisor.identities import (
    IdentityError,
    IdentityPool,
    fresh_private_home,
    parse_uids,
    untouched,
)
from sandvisor.supervisor.procfs import ProcInfo

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("text", "uids"),
    [
        ("20000-20003", (20000, 20001, 20002, 20003)),
        ("5,7-8", (5, 7, 8)),
        (" 9 , 9-10 ", (9, 10)),
        ("", ()),
        (",", ()),
    ],
)
def test_parse_uids_reads_ranges_and_lists(text: str, uids: tuple[int, ...]) -> None:
    assert parse_uids(text) == uids


@pytest.mark.parametrize("text", ["a", "0", "0-3", "5-3", "1-b", "-4"])
def test_parse_uids_refuses_what_is_no_pool_of_job_uids(text: str) -> None:
    with pytest.raises(IdentityError):
        parse_uids(text)


def process(pid: int) -> ProcInfo:
    return ProcInfo(pid, "x", 1, pid, pid, "S", pid * 10, 0, 0)


class FakeTable:
    """The process table the pool sees: uid -> processes; ``kill`` records what it ended."""

    def __init__(self) -> None:
        self.by_uid: dict[int, list[ProcInfo]] = {}
        self.killed: list[int] = []

    def find(self, uids: Iterable[int]) -> dict[int, list[ProcInfo]]:
        wanted = set(uids)
        return {uid: procs for uid, procs in self.by_uid.items() if uid in wanted and procs}

    def kill(self, info: ProcInfo) -> bool:
        self.killed.append(info.pid)
        return True


def pool_of(uids: Iterable[int], table: FakeTable, lock_dir: Path | None = None) -> IdentityPool:
    """A pool that claims a uid only when a holder asks (no stock kept ahead)."""
    return IdentityPool(uids, 20000, lock_dir, find=table.find, kill=table.kill, stock=0)


def test_each_holder_gets_its_own_uid_until_none_is_left() -> None:
    pool = pool_of([1, 2], FakeTable())
    first, second = pool.try_acquire(), pool.try_acquire()
    assert first is not None and second is not None
    assert {first.uid, second.uid} == {1, 2} and first.gid == second.gid == 20000
    assert pool.try_acquire() is None
    assert pool.held == {1, 2}


def test_a_uid_returned_empty_goes_out_again_without_a_walk() -> None:
    pool = pool_of([1], FakeTable())
    lease = pool.try_acquire()
    assert lease is not None
    walks = pool.walks
    lease.release(empty=True)
    again = pool.try_acquire()
    assert again is not None and again.uid == 1 and pool.walks == walks


def test_a_uid_with_a_process_left_stays_out_and_its_leftover_is_killed() -> None:
    table = FakeTable()
    pool = pool_of([1], table)
    lease = pool.try_acquire()
    assert lease is not None
    table.by_uid[1] = [process(4242)]  # the job's tree missed it
    lease.release()
    assert pool.try_acquire() is None  # a leftover of uid 1 and nobody holds uid 1
    assert table.killed == [4242]
    table.by_uid[1] = []  # the kill took effect
    again = pool.try_acquire()
    assert again is not None and again.uid == 1


def test_a_uid_with_processes_at_claim_time_is_not_handed_out_until_they_are_gone() -> None:
    table = FakeTable()
    table.by_uid[1] = [process(7)]  # left by an earlier supervisor
    pool = pool_of([1, 2], table)
    lease = pool.try_acquire()
    assert lease is not None and lease.uid == 2
    assert set(table.killed) == {7}  # killed at each walk until it is gone


def test_release_twice_is_harmless() -> None:
    pool = pool_of([1, 2], FakeTable())
    lease = pool.try_acquire()
    assert lease is not None
    lease.release(empty=True)
    lease.release(empty=True)
    assert pool.try_acquire() is not None and pool.try_acquire() is not None
    assert pool.try_acquire() is None


async def test_two_pools_on_one_machine_never_hand_out_one_uid(tmp_path: Path) -> None:
    first, second = pool_of([1, 2], FakeTable(), tmp_path), pool_of([1, 2], FakeTable(), tmp_path)
    a = first.try_acquire()
    b = second.try_acquire()
    assert a is not None and b is not None and a.uid != b.uid
    assert second.try_acquire() is None  # the other uid is the first pool's
    await first.close()
    c = second.try_acquire()
    assert c is not None and c.uid == a.uid
    await second.close()


async def test_acquire_waits_for_a_release() -> None:
    pool = pool_of([1], FakeTable())
    lease = pool.try_acquire()
    assert lease is not None
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    lease.release(empty=True)
    again = await asyncio.wait_for(waiting, 5)
    assert again.uid == 1


async def test_each_holder_gets_fresh_private_dirs_made_ahead(tmp_path: Path) -> None:
    prepared: list[int] = []
    homes = tmp_path / "private"
    pool = IdentityPool(
        [1, 2, 3], 20000, homes=homes, find=FakeTable().find, prepare=prepared.append
    )
    await pool.start()
    assert prepared == [1, 2]  # the stock, made ready before any job asks
    lease = pool.try_acquire()
    assert lease is not None and lease.home == homes / "1"
    await pool.settled()
    assert prepared == [1, 2, 3]  # the stock made up again, off the job's path
    lease.release(empty=True)
    assert pool.try_acquire() is not None and pool.try_acquire() is not None
    assert pool.try_acquire() is None  # uid 1 is being made fresh again: not before that
    await pool.settled()
    again = pool.try_acquire()
    assert again is not None and again.uid == 1 and prepared.count(1) == 2
    await pool.close()


def test_fresh_private_home_removes_what_the_last_holder_left(tmp_path: Path) -> None:
    prepare = fresh_private_home(tmp_path, os.getgid())
    prepare(os.getuid())
    home = tmp_path / str(os.getuid())
    (home / "site" / "installed.py").write_text("x = 1")
    (home / ".cache").mkdir()
    prepare(os.getuid())
    assert sorted(path.name for path in home.iterdir()) == ["site", "tmp"]
    assert list((home / "site").iterdir()) == []
    assert (home.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(
    "change",
    [
        lambda home: (home / "tmp" / "left.txt").write_text("x"),
        lambda home: (home / "site" / "pkg").mkdir(),
        lambda home: (home / ".bashrc").write_text("x"),
        lambda home: home.chmod(0o777),
        lambda home: (home / "tmp").rmdir() or (home / "tmp").symlink_to("/etc"),
    ],
)
def test_a_home_its_holder_touched_is_made_anew(tmp_path: Path, change: Any) -> None:
    prepare = fresh_private_home(tmp_path, os.getgid())
    uid = os.getuid()
    prepare(uid)
    home = tmp_path / str(uid)
    assert untouched(home, uid)
    change(home)
    assert not untouched(home, uid)
    prepare(uid)
    assert untouched(home, uid)


def counting(prepare: Any) -> tuple[Any, list[int]]:
    calls: list[int] = []

    def counted(uid: int) -> None:
        calls.append(uid)
        prepare(uid)

    return counted, calls


async def held_once(pool: IdentityPool) -> Any:
    await pool.start()
    lease = pool.try_acquire()
    assert lease is not None and lease.home is not None
    return lease


@pytest.mark.parametrize("by_marks", [True, False])
async def test_a_home_is_made_anew_only_when_its_holder_changed_it(
    tmp_path: Path, by_marks: bool
) -> None:
    uid = os.getuid()
    prepare, calls = counting(fresh_private_home(tmp_path, os.getgid()))
    pool = IdentityPool([uid], os.getgid(), homes=tmp_path, find=FakeTable().find, prepare=prepare)
    lease = await held_once(pool)
    if by_marks:  # marks taken well before the holder got it: its changes show in them
        old = lease.home.stat().st_mtime - 3600
        for path in (lease.home, lease.home / "tmp", lease.home / "site"):
            os.utime(path, (old, old))
        pool._mark(uid)
        lease.acquired_at = pool._marks[uid][0] + 1
    lease.release(empty=True)
    await pool.settled()
    assert calls == [uid]  # untouched: no new making
    lease = pool.try_acquire()
    assert lease is not None and lease.home is not None
    if by_marks:
        lease.acquired_at = pool._marks[uid][0] + 1
    (lease.home / "tmp" / "left.txt").write_text("the last holder's")
    lease.release(empty=True)
    await pool.settled()
    assert calls == [uid, uid]
    assert list((lease.home / "tmp").iterdir()) == []
    await pool.close()
