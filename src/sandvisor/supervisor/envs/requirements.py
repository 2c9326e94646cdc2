"""A request's ``dependencies`` as data: validated, normalized and merged PEP 508 requirements.

Dependency strings come from whoever sends a job, and uv would read some of them as options
(``--index-url``) or as local paths (``./pkg``, ``x.whl``). So every string is parsed with
``packaging``, options and line breaks are refused outright, direct URLs only pass when the
supervisor allows them, and what reaches uv is our own rendering of the parsed requirement
(canonical names, so ``foo.whl`` becomes ``foo-whl``), never the caller's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from sandvisor.supervisor.errors import RequirementRejected

MAX_REQUIREMENT_CHARS = 1000
MAX_REQUIREMENTS = 256


@dataclass(frozen=True, order=True)
class NormalizedRequirement:
    """One requirement after normalization; ``spec`` is the exact text uv receives."""

    name: str  # canonical project name
    spec: str  # canonical rendering without marker, e.g. "six[b]==1.16.0"
    url: str | None

    def to_packaging(self) -> Requirement:
        return Requirement(self.spec)


def parse_dependencies(
    texts: Iterable[str], *, allow_direct_urls: bool = False
) -> tuple[NormalizedRequirement, ...]:
    """Validate and normalize a request's dependency list.

    Requirements whose environment marker is false here are dropped (the env key already pins
    the Python version and platform). The same name twice is merged: specifiers intersect,
    extras unite. The result is sorted, so the same set in any order gives the same tuple.
    """
    items = list(texts)
    if len(items) > MAX_REQUIREMENTS:
        raise RequirementRejected(
            f"{len(items)} dependencies", f"at most {MAX_REQUIREMENTS} are accepted"
        )
    marker_env = default_environment()
    merged: dict[str, Requirement] = {}
    for text in items:
        requirement = _parse_one(text, allow_direct_urls)
        if requirement.marker is not None and not requirement.marker.evaluate(
            dict(marker_env) | {"extra": ""}
        ):
            continue
        requirement.marker = None
        name = canonicalize_name(requirement.name)
        if name in merged:
            requirement = _merge(merged[name], requirement, text)
        merged[name] = requirement
    return tuple(sorted(_normalize(name, req) for name, req in merged.items()))


def _parse_one(text: object, allow_direct_urls: bool) -> Requirement:
    if not isinstance(text, str):
        raise RequirementRejected(repr(text), "a dependency must be a string")
    stripped = text.strip()
    if not stripped:
        raise RequirementRejected(text, "empty")
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise RequirementRejected(text, f"longer than {MAX_REQUIREMENT_CHARS} characters")
    if stripped.startswith("-"):
        raise RequirementRejected(text, "options are not accepted, only requirements")
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise RequirementRejected(text, "contains a line break or control character")
    try:
        requirement = Requirement(stripped)
    except InvalidRequirement as exc:
        first_line = str(exc).splitlines()[0]
        raise RequirementRejected(text, f"not a PEP 508 requirement ({first_line})") from None
    if requirement.url is not None and not allow_direct_urls:
        raise RequirementRejected(
            text, "direct URLs and local paths are not allowed by this supervisor"
        )
    return requirement


def _merge(first: Requirement, second: Requirement, text: str) -> Requirement:
    if first.url != second.url:
        raise RequirementRejected(text, f"conflicts with another requirement for {first.name}")
    merged = Requirement(first.name)
    merged.url = first.url
    merged.extras = first.extras | second.extras
    merged.specifier = SpecifierSet(str(first.specifier)) & second.specifier
    return merged


def _normalize(name: str, requirement: Requirement) -> NormalizedRequirement:
    extras = sorted(canonicalize_name(extra) for extra in requirement.extras)
    spec = name + (f"[{','.join(extras)}]" if extras else "")
    if requirement.url is not None:
        spec += f" @ {requirement.url}"
    else:
        spec += str(requirement.specifier)
    return NormalizedRequirement(name=name, spec=spec, url=requirement.url)
