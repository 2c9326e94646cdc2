"""The env key: which dependency set, on which interpreter, layered on which base; and the plan.

Reuse is on exact equality of the key (a different base fingerprint, Python or platform is a
different env), and the key is short enough to be a directory name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from sandvisor.supervisor.envs.base import BaseEnvironment
from sandvisor.supervisor.envs.requirements import NormalizedRequirement

# Bump when the layout of a built env changes, so old envs are never reused.
# 2: builds are constrained to the runtime's msgpack/cloudpickle ranges; older envs may not be.
LAYOUT_VERSION = 2
KEY_CHARS = 24


@dataclass(frozen=True)
class EnvPlan:
    """A dependency list here: its env key (None: the base suffices) and what to install."""

    key: str | None
    requirements: tuple[NormalizedRequirement, ...]
    missing: tuple[NormalizedRequirement, ...]  # what the base does not already satisfy


def env_key(
    requirements: Iterable[NormalizedRequirement],
    base: BaseEnvironment,
    runtime: Iterable[str] = (),
) -> str:
    """``runtime``: the ranges the child runtime needs, which every build is held to."""
    document = {
        "layout": LAYOUT_VERSION,
        "requirements": sorted(r.spec for r in requirements),
        "runtime": sorted(runtime),
        "tag": base.tag,
        "base": base.fingerprint,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_CHARS]
