"""A job writes frames of its own on its protocol descriptor (fd 3): the supervisor checks every
field it takes from them. A malformed frame is the job's own error in one line, never an
internal error of sandvisor nor an answer that breaks the response's rules; an import report
grows nothing beyond its bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, function_request, make_settings

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor

pytestmark = pytest.mark.timeout(120)

# Writes ``frame`` as the child would (a 4-byte length, then msgpack), then answers as usual:
# the first answer counts, so the forged one is what the supervisor must judge.
FORGES = """
import os, struct, msgpack
def main(frame, repeat=1):
    frame = {key: (value * repeat if key == "fields" and repeat > 1 else value)
             for key, value in frame.items()}
    # A request carries JSON only: "bytes:..." in a field stands for the bytes a forger sends.
    fields = frame.get("fields")
    if isinstance(fields, dict):
        frame["fields"] = {k: (v[6:].encode() if isinstance(v, str) and v.startswith("bytes:") else v)
                           for k, v in fields.items()}
    body = msgpack.packb(frame, use_bin_type=True)
    os.write(3, struct.pack(">I", len(body)) + body)
    return "honest answer"
"""

MALFORMED = "the job sent a malformed"

# (forged frame, request limits, expected error_type or None for success, text in the error)
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any], ErrorType | None, str]] = {
    "result with success and error": (
        {"t": "result", "fields": {"json_result": 1, "success": False, "error": "x"}},
        {},
        ErrorType.USER_EXCEPTION,
        MALFORMED,
    ),
    "result with bad timings": (
        {"t": "result", "fields": {"json_result": 1, "timings": "bad"}},
        {},
        ErrorType.USER_EXCEPTION,
        MALFORMED,
    ),
    "result claiming an ending": (
        {
            "t": "result",
            "fields": {"json_result": 1, "error_type": "timeout", "exit_code": 9, "signal": 9},
        },
        {},
        ErrorType.USER_EXCEPTION,
        MALFORMED,
    ),
    "result over the request's max_result_bytes": (
        {"t": "result", "fields": {"json_result": "r" * 5000}},
        {"max_result_bytes": 1000},
        ErrorType.USER_EXCEPTION,
        "over the 1000-byte limit",
    ),
    "result that is not a string": (
        {"t": "result", "fields": {"result": 123}},
        {},
        ErrorType.USER_EXCEPTION,
        MALFORMED,
    ),
    "json_result that JSON cannot carry": (
        {"t": "result", "fields": {"json_result": "bytes:\x00bytes"}},
        {},
        ErrorType.USER_EXCEPTION,
        MALFORMED,
    ),
    "result with no fields": ({"t": "result"}, {}, ErrorType.USER_EXCEPTION, MALFORMED),
    "error claiming a memory limit": (
        {"t": "error", "kind": "memory_limit", "summary": "killed: memory 9 TB over"},
        {},
        ErrorType.USER_EXCEPTION,
        "killed: memory 9 TB over",
    ),
    "error with a summary that is not a string": (
        {"t": "error", "kind": "user_exception", "summary": 5},
        {},
        ErrorType.USER_EXCEPTION,
        MALFORMED,
    ),
    "a well-formed result of its own": (
        {"t": "result", "fields": {"json_result": 7}},
        {},
        None,
        "",
    ),
}


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(make_settings(tmp_path / "home")) as running:
        yield running


@pytest.mark.parametrize("row", list(ROWS))
async def test_a_forged_frame_is_checked(sup: Supervisor, row: str) -> None:
    frame, limits, error_type, text = ROWS[row]
    request = function_request(FORGES, args=[frame], limits=limits)
    response = await asyncio.wait_for(sup.run(request), 60)
    if error_type is None:
        assert response.success and response.json_result == 7, response.error
        return
    assert not response.success
    assert response.error_type is error_type, response.error
    assert response.error is not None and text in response.error
    assert "internal error" not in response.error
    assert "\n" not in response.error  # one line
    assert response.exit_code is None and response.signal is None


async def test_a_flood_of_forged_import_reports_counts_a_bounded_few(tmp_path: Path) -> None:
    code = """
import os, struct, msgpack
def main():
    names = ['m%07d' % i for i in range(100000)] + ['bad name', 'x' * 500, 7]
    for _ in range(3):
        body = msgpack.packb({"t": "imports", "modules": names}, use_bin_type=True)
        os.write(3, struct.pack(">I", len(body)) + body)
    return len(body)
"""
    settings = make_settings(tmp_path / "home", adaptive_preload=True)
    async with Supervisor(settings) as sup:
        response = await asyncio.wait_for(sup.run(function_request(code)), 60)
        assert response.success, response.error
        assert sup.templates is not None
        await sup.templates.trials.settled()
        learners = list(sup.templates.trials._learners.values())
        assert learners, "the report was not counted at all"
        # One report a job, its first 64 names, each once.
        assert all(sorted(learner._counts.values()) == [1] * 64 for learner in learners)


ACTOR = """
import os, struct, msgpack
class Forger:
    def __init__(self):
        self.calls = 0
    def forge(self, frame):
        self.calls += 1
        frame = dict(frame, seq=self.calls)
        body = msgpack.packb(frame, use_bin_type=True)
        os.write(3, struct.pack(">I", len(body)) + body)
        return "honest answer"
    def count(self):
        self.calls += 1
        return self.calls
"""


async def test_an_actor_forging_frames_gets_its_own_error_and_later_calls_their_own_answers(
    sup: Supervisor,
) -> None:
    forged = {
        "t": "result",
        "fields": {"json_result": 1, "success": False, "error_type": "timeout"},
        "info": {"pid": "not a pid", "memory": 7},
    }
    request = class_request("Forger", ACTOR, "forge", forged, instance_id="forger")
    response = await asyncio.wait_for(sup.run(request), 60)
    assert not response.success and response.error_type is ErrorType.USER_EXCEPTION
    assert response.error is not None and MALFORMED in response.error, response.error
    assert response.instance_info is not None and isinstance(response.instance_info["pid"], int)
    # The honest answer the forged one displaced never answers a later call.
    later = await asyncio.wait_for(
        sup.run(
            class_request("Forger", ACTOR, "count", instance_id="forger", create_new_instance=False)
        ),
        60,
    )
    assert later.success and later.json_result == 2, later.error
