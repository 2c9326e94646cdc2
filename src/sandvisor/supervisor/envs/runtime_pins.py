"""What the child runtime needs of the packages it imports, and which requests contradict it.

The child runtime (``sandbox_child`` and the protocol it speaks) imports cloudpickle and msgpack
from the env a job runs in, and what a request installs there wins over the base's copy. So every
env build hands uv sandvisor's own declared ranges for both as constraints, and a request that
plainly contradicts them (``msgpack==0.6.2``, ``cloudpickle<3``) is refused before uv runs; a
conflict only uv can see (through another package's requirements) fails its resolution, and the
failure is explained by :func:`explain_resolution_failure`.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.specifiers import Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from sandvisor.supervisor.envs.requirements import NormalizedRequirement
from sandvisor.supervisor.errors import RequirementRejected

DISTRIBUTION = "sandvisor"
# Each package the runtime imports in a job's env, and what breaks without a compatible one.
RUNTIME_PACKAGES = {
    "cloudpickle": "arguments and results cross the child's protocol as cloudpickle",
    "msgpack": "the child's protocol frames are msgpack",
}


@dataclass(frozen=True)
class RuntimePin:
    """A range of one package the child runtime needs in every env."""

    name: str
    specifier: SpecifierSet
    why: str

    @property
    def spec(self) -> str:
        return f"{self.name}{self.specifier}"


@functools.cache
def runtime_pins() -> tuple[RuntimePin, ...]:
    """sandvisor's declared ranges for the runtime's packages; read once per process."""
    try:
        declared = importlib.metadata.requires(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        declared = None
    return pins_from(declared)


def pins_from(declared: Sequence[str] | None) -> tuple[RuntimePin, ...]:
    """Pins from the distribution's ``Requires-Dist`` lines (None: no metadata found).

    A runtime package the metadata does not name (a source tree on ``sys.path``, no install)
    gets the installed version as its floor: the runtime is known to work with that one.
    """
    ranges = _declared_ranges(declared or ())
    pins = []
    for name, why in RUNTIME_PACKAGES.items():
        specifier = ranges[name] if name in ranges else _installed_floor(name)
        if specifier:
            pins.append(RuntimePin(name=name, specifier=specifier, why=why))
    return tuple(pins)


def refuse_conflicts(
    requirements: Iterable[NormalizedRequirement], pins: Sequence[RuntimePin]
) -> None:
    """Raise :class:`RequirementRejected` for a requirement no runtime-compatible version meets."""
    for requirement in requirements:
        pin = conflicting_pin(requirement, pins)
        if pin is not None:
            raise RequirementRejected(
                requirement.spec,
                f"conflicts with {pin.spec}, which the sandvisor runtime needs ({pin.why})",
            )


def conflicting_pin(
    requirement: NormalizedRequirement, pins: Iterable[RuntimePin]
) -> RuntimePin | None:
    """The pin no version allowed by ``requirement`` can satisfy, where that is certain.

    None when the two may overlap, or when only uv can tell (a direct URL, ``!=`` exclusions).
    """
    if requirement.url is not None:
        return None
    wanted = requirement.to_packaging().specifier
    if _provably_empty(wanted):
        return None  # contradicts itself, not the runtime: uv says so in its own words
    for pin in pins:
        if pin.name == requirement.name and _provably_empty(wanted & pin.specifier):
            return pin
    return None


def explain_resolution_failure(message: str, pins: Iterable[RuntimePin]) -> str | None:
    """A first line for uv's failure when its resolution failed on a runtime package; else None."""
    if "No solution found" not in message:
        return None
    # uv's derivation quotes the constraint ("depends on msgpack>=1.0.8") when it is to blame.
    named = [
        pin for pin in pins if any(f"{pin.name}{clause}" in message for clause in pin.specifier)
    ]
    if not named:
        return None
    needs = "; ".join(f"{pin.spec} ({pin.why})" for pin in named)
    return f"the dependencies conflict with what the sandvisor runtime needs: {needs}"


def _declared_ranges(declared: Iterable[str]) -> dict[str, SpecifierSet]:
    ranges: dict[str, SpecifierSet] = {}
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra's, or another platform's
        name = canonicalize_name(requirement.name)
        if name in RUNTIME_PACKAGES:
            ranges[name] = ranges.get(name, SpecifierSet()) & requirement.specifier
    return ranges


def _installed_floor(name: str) -> SpecifierSet:
    try:
        return SpecifierSet(f">={importlib.metadata.version(name)}")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return SpecifierSet()


# ---- is a specifier set empty? -------------------------------------------------------------
# Each clause is widened to an interval; the set is certainly empty when the intervals do not
# meet, or when it has exact pins and none of them meets every clause. Widening only ever adds
# versions, so "empty" is never claimed wrongly; what it cannot prove is left to uv.

_Bound = tuple[Version, bool]  # the version, and whether it is itself included


def _provably_empty(specifier: SpecifierSet) -> bool:
    points = [point for point in map(_exact_version, specifier) if point is not None]
    if points:
        return not any(specifier.contains(point, prereleases=True) for point in points)
    lower: _Bound | None = None
    upper: _Bound | None = None
    for clause in specifier:
        low, high = _interval(clause)
        if low is not None and (lower is None or _tighter_lower(low, lower)):
            lower = low
        if high is not None and (upper is None or _tighter_upper(high, upper)):
            upper = high
    if lower is None or upper is None:
        return False
    return lower[0] > upper[0] or (lower[0] == upper[0] and not (lower[1] and upper[1]))


def _exact_version(clause: Specifier) -> Version | None:
    if clause.operator not in ("==", "===") or clause.version.endswith(".*"):
        return None
    try:
        return Version(clause.version)
    except InvalidVersion:
        return None


def _interval(clause: Specifier) -> tuple[_Bound | None, _Bound | None]:
    """Bounds that hold for every version ``clause`` allows (None: unbounded on that side)."""
    operator, text = clause.operator, clause.version
    if operator == "==" and text.endswith(".*"):
        return None, (_next_release(Version(text[:-2]), keep=None), False)
    if operator in ("!=", "==="):
        return None, None
    version = Version(text)
    if operator == "~=":
        return (version, True), (_next_release(version, keep=-1), False)
    inclusive = operator in (">=", "<=", "==")
    low = (version, inclusive) if operator in (">=", ">", "==") else None
    high = (version, inclusive) if operator in ("<=", "<", "==") else None
    return low, high


def _next_release(version: Version, keep: int | None) -> Version:
    """The first release past a prefix: 2.2 -> 3 (``~=2.2``, keep=-1), 1.0 -> 1.1 (``==1.0.*``)."""
    prefix = list(version.release[:keep])
    prefix[-1] += 1
    epoch = f"{version.epoch}!" if version.epoch else ""
    return Version(epoch + ".".join(map(str, prefix)))


def _tighter_lower(candidate: _Bound, current: _Bound) -> bool:
    return candidate[0] > current[0] or (candidate[0] == current[0] and not candidate[1])


def _tighter_upper(candidate: _Bound, current: _Bound) -> bool:
    return candidate[0] < current[0] or (candidate[0] == current[0] and not candidate[1])
