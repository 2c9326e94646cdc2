"""Limits: defaults, lowering, raising up to the ceiling, refusal above it, rlimits as data."""

from __future__ import annotations

import resource

import pytest

from sandvisor.protocol.models import RequestLimits
from sandvisor.supervisor.errors import LimitsError
from sandvisor.supervisor.limits import GIB, MIB, NPROC_MARGIN, Limits
from sandvisor.supervisor.settings import Settings


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"memory_mb": 1024, "timeout_s": 60.0, "max_timeout_s": 600.0}
    return Settings.from_env({}, **(base | overrides))


def test_defaults_come_from_settings() -> None:
    limits = Limits.resolve(settings(cpu_s=30.0, max_procs=64))
    assert limits.timeout_s == 60.0
    assert limits.memory_bytes == 1024 * MIB
    assert limits.memory_mb == 1024
    assert limits.cpu_s == 30.0
    assert limits.max_procs == 64
    assert limits.gpus == 0
    assert limits.grace_s == 3.0


def test_a_request_may_lower_any_limit() -> None:
    asked = RequestLimits(
        timeout_s=1.5, memory_mb=100, max_procs=4, max_output_bytes=10, max_open_files=64
    )
    limits = Limits.resolve(settings(), asked)
    assert (limits.timeout_s, limits.memory_mb, limits.max_procs) == (1.5, 100, 4)
    assert (limits.max_output_bytes, limits.max_open_files) == (10, 64)


def test_a_request_may_raise_up_to_the_ceiling() -> None:
    limits = Limits.resolve(
        settings(max_memory_mb=4096), RequestLimits(timeout_s=600.0, memory_mb=4096)
    )
    assert limits.timeout_s == 600.0
    assert limits.memory_mb == 4096


@pytest.mark.parametrize(
    ("asked", "words"),
    [
        (RequestLimits(timeout_s=601.0), "limits.timeout_s 601 is over the ceiling of 600"),
        (RequestLimits(memory_mb=1025), "SANDVISOR_MAX_MEMORY_MB"),
        (RequestLimits(max_procs=513), "limits.max_procs 513 is over the ceiling of 512"),
        (RequestLimits(max_result_bytes=10**12), "SANDVISOR_MAX_RESULT_BYTES"),
        (RequestLimits(gpus=1), "limits.gpus 1 is more than the 0 GPU(s)"),
    ],
)
def test_above_the_ceiling_is_refused_in_one_line(asked: RequestLimits, words: str) -> None:
    with pytest.raises(LimitsError) as caught:
        Limits.resolve(settings(), asked)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cpu_is_unlimited_unless_configured_or_asked() -> None:
    assert Limits.resolve(settings()).cpu_s is None
    assert Limits.resolve(settings(), RequestLimits(cpu_s=5.0)).cpu_s == 5.0
    with pytest.raises(LimitsError, match="SANDVISOR_CPU_S"):
        Limits.resolve(settings(cpu_s=2.0), RequestLimits(cpu_s=5.0))


def test_gpus_default_to_one_when_there_are_any() -> None:
    assert Limits.resolve(settings(), gpus_available=2).gpus == 1
    assert Limits.resolve(settings(), gpus_available=0).gpus == 0
    assert Limits.resolve(settings(), RequestLimits(gpus=2), gpus_available=2).gpus == 2
    assert Limits.resolve(settings(), RequestLimits(gpus=0), gpus_available=2).gpus == 0


def test_rlimits_are_plain_data_the_child_can_apply() -> None:
    limits = Limits.resolve(settings(cpu_s=2.5, max_open_files=256))
    rlimits = limits.rlimits()
    assert rlimits["RLIMIT_CORE"] == (0, 0)
    assert rlimits["RLIMIT_NOFILE"] == (256, 256)
    soft, hard = rlimits["RLIMIT_CPU"]
    assert soft == 3 and hard > soft  # the hard limit ends a process that ignores SIGXCPU
    assert rlimits["RLIMIT_AS"][0] >= 1024 * MIB + 4 * GIB
    for name, (soft, hard) in rlimits.items():
        assert hasattr(resource, name)
        assert isinstance(soft, int) and isinstance(hard, int)


def test_no_address_space_limit_with_a_gpu() -> None:
    rlimits = Limits.resolve(settings(), gpus_available=1).rlimits()
    assert "RLIMIT_AS" not in rlimits
    assert "RLIMIT_CPU" not in rlimits


def test_rlimits_never_exceed_our_own_hard_limit() -> None:
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    rlimits = Limits.resolve(settings(max_open_files=10**9)).rlimits()
    if own_hard != resource.RLIM_INFINITY:
        assert rlimits["RLIMIT_NOFILE"][1] <= own_hard


def test_rlimit_nproc_bounds_a_job_identity_only() -> None:
    limits = Limits.resolve(settings(max_procs=64))
    assert "RLIMIT_NPROC" not in limits.rlimits()  # the supervisor's own uid: never bounded
    soft, hard = limits.rlimits(identity=True)["RLIMIT_NPROC"]
    assert soft == hard <= 64 + NPROC_MARGIN
