"""The supervisor's own Python environment, the base every job env is layered on.

Read once per supervisor: which interpreter, which site directories, which distributions at which
versions. From that come the base fingerprint (part of every env key, so a changed base never
reuses an env built against the old one) and the "already satisfied" lookup that lets a request
naming only what the base has run without any venv.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class BaseEnvironment:
    python: Path
    site_dirs: tuple[Path, ...]
    versions: dict[str, Version] = field(repr=False)
    requires: dict[str, tuple[str, ...]] = field(repr=False)
    tag: str  # interpreter and platform, e.g. "cpython-3.11.7-linux-x86_64"
    fingerprint: str

    @classmethod
    def current(cls) -> BaseEnvironment:
        site_dirs = _site_dirs()
        versions: dict[str, Version] = {}
        requires: dict[str, tuple[str, ...]] = {}
        for dist in importlib.metadata.distributions(path=[str(d) for d in site_dirs]):
            name = canonicalize_name(dist.metadata["Name"] or "")
            if not name or name in versions:
                continue  # the first on the path is the one imports see
            try:
                versions[name] = Version(dist.version)
            except InvalidVersion:
                continue
            requires[name] = tuple(dist.requires or ())
        tag = "-".join(
            (
                sys.implementation.name,
                platform.python_version(),
                sysconfig.get_platform(),
                sys.abiflags or "none",
            )
        )
        digest = hashlib.sha256(
            json.dumps(
                {
                    "python": str(Path(sys.executable)),
                    "site": [str(d) for d in site_dirs],
                    "dists": sorted(f"{name}=={v}" for name, v in versions.items()),
                    "tag": tag,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        return cls(
            python=Path(sys.executable),
            site_dirs=site_dirs,
            versions=versions,
            requires=requires,
            tag=tag,
            fingerprint=digest[:16],
        )

    def satisfies(self, requirement: Requirement, _seen: frozenset[str] = frozenset()) -> bool:
        """Whether the base already provides ``requirement``, its extras' dependencies included."""
        if requirement.url is not None:
            return False
        name = canonicalize_name(requirement.name)
        version = self.versions.get(name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            return False
        key = f"{name}{sorted(requirement.extras)}"
        if key in _seen:
            return True
        return all(
            self.satisfies(dep, _seen | {key})
            for extra in requirement.extras
            for dep in self._extra_requirements(name, extra)
        )

    def _extra_requirements(self, name: str, extra: str) -> list[Requirement]:
        wanted = []
        for text in self.requires.get(name, ()):
            dep = Requirement(text)
            # Only markers naming an extra belong to one; others are the base requirements.
            if dep.marker is None or "extra" not in str(dep.marker):
                continue
            if dep.marker.evaluate({"extra": extra}):
                wanted.append(dep)
        return wanted


def _site_dirs() -> tuple[Path, ...]:
    """Site directories of this interpreter, in sys.path order (user site excluded: not shared)."""
    candidates = [Path(p) for p in site.getsitepackages()]
    on_path = [Path(p) for p in sys.path if p]
    ordered = [p for p in on_path if p in candidates]
    ordered += [p for p in candidates if p not in ordered and p.is_dir()]
    return tuple(ordered)
