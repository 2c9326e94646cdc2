"""The kernel's OOM-kill count, from cgroup v1 or v2 files."""

from __future__ import annotations

from pathlib import Path

from sandvisor.supervisor.oom import _read_oom_kill, oom_kill_count


def test_both_cgroup_formats_are_read(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    assert _read_oom_kill(v2) == 2
    assert _read_oom_kill(v1) == 7
    assert _read_oom_kill(tmp_path / "absent") is None


def test_this_machine_answers_a_count_or_none() -> None:
    count = oom_kill_count()
    assert count is None or count >= 0


def test_the_default_memory_limit_fits_in_the_container() -> None:
    from sandvisor.supervisor.oom import cgroup_memory_limit
    from sandvisor.supervisor.settings import default_memory_mb

    limit = cgroup_memory_limit()
    assert limit is None or limit > 0
    if limit is not None:
        assert default_memory_mb() * 1024 * 1024 < limit
