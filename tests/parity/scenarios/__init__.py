"""The parity table: ordinary Python programs that must behave under sandvisor as under ``python``.

One :class:`~tests.parity.harness.Scenario` per row, in one module per family of Python
behaviour; ``test_parity`` runs each both ways and compares the answers.
"""

from __future__ import annotations

from tests.parity.harness import Scenario
from tests.parity.scenarios.calls import ASYNC_AND_CALLABLES
from tests.parity.scenarios.classes import CLASSES
from tests.parity.scenarios.data_types import DATACLASSES, ENUMS_AND_PYDANTIC, PICKLING
from tests.parity.scenarios.differences import DIFFERENCES
from tests.parity.scenarios.endings import (
    EXITS_AND_DEATHS,
    TRACEBACKS,
    UNUSUAL_ENDINGS,
    WARNINGS_AND_INPUT,
)
from tests.parity.scenarios.module_identity import MODULE_IDENTITY, MODULES
from tests.parity.scenarios.output import OUTPUT_AND_LOGGING
from tests.parity.scenarios.processes import MULTIPROCESSING

ALL: list[Scenario] = [
    *DATACLASSES,
    *ENUMS_AND_PYDANTIC,
    *PICKLING,
    *MULTIPROCESSING,
    *ASYNC_AND_CALLABLES,
    *MODULE_IDENTITY,
    *WARNINGS_AND_INPUT,
    *EXITS_AND_DEATHS,
    *OUTPUT_AND_LOGGING,
    *MODULES,
    *TRACEBACKS,
    *UNUSUAL_ENDINGS,
    *CLASSES,
    *DIFFERENCES,
]
