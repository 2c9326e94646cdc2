"""Process names: jobs and spares in disjoint spaces, and no two job ids read as one."""

from __future__ import annotations

import re

import pytest

from sandvisor.protocol.messages import (
    COMM_MAX,
    JOB_COMM_PREFIX,
    SPARE_COMM_PREFIX,
    SPARE_NAME,
)
from sandvisor.supervisor.proctree import job_comm

JOB_NAME = re.compile(re.escape(JOB_COMM_PREFIX) + r"[0-9a-f]{12}")

IDS = [
    "spare",  # would have been sv-spare, the spare's own name
    "sv:spare",
    "",
    "0123456789abcdef",
    "sync-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-u1",
    "x" * 500,
    "jöb-ünïcode",
]


@pytest.mark.parametrize("job_id", IDS)
def test_a_job_name_is_in_the_job_space_only(job_id: str) -> None:
    name = job_comm(job_id)
    assert JOB_NAME.fullmatch(name), name
    assert len(name.encode()) <= COMM_MAX  # the kernel would cut a longer one
    assert not name.startswith(SPARE_COMM_PREFIX) and name != SPARE_NAME


def test_the_spare_name_is_in_the_spare_space_only() -> None:
    assert SPARE_NAME.startswith(SPARE_COMM_PREFIX) and len(SPARE_NAME.encode()) <= COMM_MAX
    assert not SPARE_NAME.startswith(JOB_COMM_PREFIX)
    assert not JOB_COMM_PREFIX.startswith(SPARE_COMM_PREFIX)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("sync-aaaaaaaa-1", "sync-aaaaaaaa-2"),  # the same first 12 characters
        ("0123456789abcdef", "0123456789abcdeF"),
        ("a" * 100, "a" * 101),
        ("spare", "spare."),
    ],
)
def test_ids_that_differ_only_past_the_kernels_limit_get_different_names(
    one: str, other: str
) -> None:
    assert job_comm(one) != job_comm(other)
    assert job_comm(one) == job_comm(one)  # and the same id always the same name
