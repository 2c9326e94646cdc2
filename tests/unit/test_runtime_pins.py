"""The child runtime's package ranges: read from sandvisor's metadata, and conflicts found early."""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sandvisor.supervisor.envs.requirements import parse_dependencies
from sandvisor.supervisor.envs.runtime_pins import (
    RUNTIME_PACKAGES,
    RuntimePin,
    conflicting_pin,
    explain_resolution_failure,
    pins_from,
    refuse_conflicts,
    runtime_pins,
)
from sandvisor.supervisor.errors import RequirementRejected

MSGPACK = RuntimePin("msgpack", SpecifierSet(">=1.0.8"), "frames")
CLOUDPICKLE = RuntimePin("cloudpickle", SpecifierSet(">=3.1.1"), "arguments")


def conflicts(text: str, pin: RuntimePin = MSGPACK) -> bool:
    (requirement,) = parse_dependencies([text], allow_direct_urls=True)
    return conflicting_pin(requirement, [CLOUDPICKLE, pin]) is not None


def test_the_pins_are_sandvisors_declared_ranges() -> None:
    declared = {
        Requirement(text).name: Requirement(text).specifier
        for text in importlib.metadata.requires("sandvisor") or ()
    }
    assert {pin.name: pin.specifier for pin in runtime_pins()} == {
        name: declared[name] for name in RUNTIME_PACKAGES
    }
    for pin in runtime_pins():  # the base this runs on meets them, or nothing would work
        assert pin.specifier.contains(importlib.metadata.version(pin.name))


def test_markers_and_unrelated_lines_are_left_out() -> None:
    pins = pins_from(["psutil>=6", "msgpack>=1.0.8", "msgpack<2; python_version < '3'"])
    assert [pin.spec for pin in pins if pin.name == "msgpack"] == ["msgpack>=1.0.8"]


def test_without_metadata_the_installed_version_is_the_floor() -> None:
    floors = {pin.name: pin.spec for pin in pins_from(None)}
    assert floors == {
        name: f"{name}>={importlib.metadata.version(name)}" for name in RUNTIME_PACKAGES
    }


def test_an_unbounded_declaration_constrains_nothing() -> None:
    assert [pin.name for pin in pins_from(["msgpack", "cloudpickle>=3"])] == ["cloudpickle"]


@pytest.mark.parametrize(
    "text",
    [
        "msgpack==0.6.2",
        "msgpack===0.6.2",
        "msgpack<1",
        "msgpack<1.0.8",
        "msgpack<=1.0.7",
        "msgpack==0.*",
        "msgpack==1.0.7.*",
        "msgpack~=0.6",
        "msgpack~=1.0.1,<1.0.8",
        "msgpack>=0.5,<1",
        "Msgpack == 0.6.2",
    ],
)
def test_ranges_outside_the_runtimes_conflict(text: str) -> None:
    assert conflicts(text)


@pytest.mark.parametrize(
    "text",
    [
        "msgpack",
        "msgpack>=0.5",
        "msgpack<=1.0.8",
        "msgpack==1.1.0",
        "msgpack==1.*",
        "msgpack~=1.0",
        "msgpack!=1.0.8",  # may still meet the range above it: uv decides
        "msgpack>2,<2",  # contradicts itself, not the runtime: uv says so
        "msgpack @ https://example.invalid/msgpack-0.6.2.tar.gz",  # only uv knows its version
        "six==1.0",
    ],
)
def test_ranges_that_may_meet_the_runtimes_pass(text: str) -> None:
    assert not conflicts(text)


def test_an_upper_bound_of_the_runtime_is_checked_too() -> None:
    capped = RuntimePin("msgpack", SpecifierSet(">=1,<2"), "frames")
    assert conflicts("msgpack>=2", capped)
    assert conflicts("msgpack==2.0.0rc1", capped)
    assert not conflicts("msgpack>=1.5", capped)


def test_a_refusal_names_the_requirement_the_range_and_why() -> None:
    requirements = parse_dependencies(["tinypkg", "MsgPack==0.6.2"])
    with pytest.raises(RequirementRejected) as caught:
        refuse_conflicts(requirements, [CLOUDPICKLE, MSGPACK])
    assert str(caught.value) == (
        "dependency 'msgpack==0.6.2' rejected: conflicts with msgpack>=1.0.8, "
        "which the sandvisor runtime needs (frames)"
    )


def test_uv_resolution_failures_blaming_a_pin_are_explained() -> None:
    said = (
        "uv exited with code 1: No solution found when resolving dependencies\n"
        "  cause: Because tinyold>=2.0 depends on cloudpickle<3 and cloudpickle>=3.1.1, ..."
    )
    assert explain_resolution_failure(said, [MSGPACK, CLOUDPICKLE]) == (
        "the dependencies conflict with what the sandvisor runtime needs: "
        "cloudpickle>=3.1.1 (arguments)"
    )


@pytest.mark.parametrize(
    "said",
    [
        "uv exited with code 1: No solution found when resolving dependencies\n"
        "  cause: Because there is no version of msgpack>=99 and you require msgpack>=99, ...",
        "uv exited with code 2: Failed to build `msgpack==0.6.2`",
    ],
)
def test_other_uv_failures_are_left_as_uv_said(said: str) -> None:
    assert explain_resolution_failure(said, [MSGPACK, CLOUDPICKLE]) is None


def test_versions_past_the_pins_floor_are_compatible() -> None:
    assert MSGPACK.specifier.contains(Version("1.2.4"))
    assert not conflicts("msgpack>=1.2.4")
