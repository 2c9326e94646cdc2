"""The kernel's OOM-kill count and memory limit, from cgroup v1 or v2 files laid out as the kernel
lays them out (a fake /proc/self/cgroup and cgroup mount in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandvisor.supervisor.oom import _read_oom_kill, cgroup_memory_limit, oom_kill_source
from sandvisor.supervisor.settings import memory_mb_within

V2_EVENTS = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n"
V1_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n"


def test_both_cgroup_formats_are_read(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.events"
    v2.write_text(V2_EVENTS)
    v1 = tmp_path / "memory.oom_control"
    v1.write_text(V1_CONTROL)
    assert _read_oom_kill(v2) == 2
    assert _read_oom_kill(v1) == 7
    assert _read_oom_kill(tmp_path / "absent") is None


def lay_out(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup of one line and a cgroup mount holding ``files``; returns both."""
    proc = tmp_path / "cgroup"
    proc.write_text(proc_line + "\n")
    root = tmp_path / "sys-fs-cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return proc, root


LAYOUTS = [
    # (id, /proc/self/cgroup line, files under the mount, OOM kills read, memory limit read)
    (
        "v2 in our own cgroup",
        "0::/job/worker",
        {"job/worker/memory.events": V2_EVENTS, "job/worker/memory.max": "268435456\n"},
        2,
        268435456,
    ),
    (
        "v2 without a limit",
        "0::/job/worker",
        {"job/worker/memory.events": V2_EVENTS, "job/worker/memory.max": "max\n"},
        2,
        None,
    ),
    (
        "v2 in a cgroup namespace: our cgroup is the mount root",
        "0::/",
        {"memory.events": V2_EVENTS, "memory.max": "1073741824\n"},
        2,
        1073741824,
    ),
    (
        "v2 whose own path is not mounted here: the mount root",
        "0::/elsewhere",
        {"memory.events": V2_EVENTS, "memory.max": "1073741824\n"},
        2,
        1073741824,
    ),
    (
        "v1 memory controller",
        "4:memory:/docker/abc",
        {
            "memory/docker/abc/memory.oom_control": V1_CONTROL,
            "memory/docker/abc/memory.limit_in_bytes": "536870912\n",
        },
        7,
        536870912,
    ),
    (
        "v1 without a limit (a number near 2**63)",
        "4:cpu,memory:/docker/abc",
        {
            "memory/docker/abc/memory.oom_control": V1_CONTROL,
            "memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
        },
        7,
        None,
    ),
    ("no memory controller at all", "3:cpu:/x", {}, None, None),
]


@pytest.mark.parametrize(
    ("proc_line", "files", "kills", "limit"),
    [row[1:] for row in LAYOUTS],
    ids=[row[0] for row in LAYOUTS],
)
def test_each_cgroup_layout_gives_its_count_and_limit(
    tmp_path: Path, proc_line: str, files: dict[str, str], kills: int | None, limit: int | None
) -> None:
    proc, root = lay_out(tmp_path, proc_line, files)
    source = oom_kill_source(proc, root)
    assert (None if source is None else _read_oom_kill(source)) == kills
    assert cgroup_memory_limit(proc, root) == limit


def test_an_unreadable_proc_file_means_only_the_mount_root_is_looked_at(tmp_path: Path) -> None:
    _, root = lay_out(tmp_path, "0::/", {"memory.events": V2_EVENTS})
    assert oom_kill_source(tmp_path / "absent", root) == root / "memory.events"


GIB = 1024**3


@pytest.mark.parametrize(
    ("total", "limit", "expected_mb"),
    [
        (24 * GIB, None, 18 * 1024),  # no container limit: three quarters of RAM
        (24 * GIB, 256 * 1024**2, 192),  # a container far below RAM: three quarters of it
        (1 * GIB, 4 * GIB, 768),  # a limit above RAM limits nothing
    ],
)
def test_the_default_memory_limit_fits_in_the_container(
    total: int, limit: int | None, expected_mb: int
) -> None:
    assert memory_mb_within(total, limit) == expected_mb
