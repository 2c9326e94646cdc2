"""A job's output is what plain Python would have written: in program order, and all of it.

fds 1 and 2 are one pipe and the job's streams hold nothing back, so whatever wrote it (print,
sys.stderr, logging, os.write, a subprocess) and however the job ended (returned, raised, exited,
a signal, killed by us for a limit), every byte written is in the response, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, function_request, make_settings, streamed

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.events import LogEvent


@pytest.fixture(params=["template", "spawn"])
async def sup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Supervisor]:
    settings = make_settings(tmp_path / "home", templates=request.param == "template")
    async with Supervisor(settings) as running:
        yield running


PARTIAL = "step 3/5 "

# How the partial line is written (no newline after it, no flush asked for).
WRITERS = {
    "print": f"    print({PARTIAL!r}, end='')\n",
    "stderr": f"    sys.stderr.write({PARTIAL!r})\n",
    "subprocess": f"    subprocess.run(['printf', '%s', {PARTIAL!r}])\n",
    "os_system": f"    os.system('printf \"{PARTIAL}\"')\n",
    "fd1": f"    os.write(1, {PARTIAL.encode()!r})\n",
    "fd2": f"    os.write(2, {PARTIAL.encode()!r})\n",
}

# How the job then ends: its body, its limits, and the error type (None: it succeeded).
DEATHS: dict[str, tuple[str, dict[str, Any], ErrorType | None]] = {
    "return": ("    return 1\n", {}, None),
    "raise": ("    raise ValueError('no')\n", {}, ErrorType.USER_EXCEPTION),
    "sys_exit": ("    sys.exit(3)\n", {}, ErrorType.EXIT),
    "os_exit": ("    os._exit(3)\n", {}, ErrorType.EXIT),
    "sigsegv": ("    ctypes.string_at(0)\n", {}, ErrorType.SIGNAL),
    "sigkill_itself": ("    os.kill(os.getpid(), signal.SIGKILL)\n", {}, ErrorType.SIGNAL),
    "timeout_kill": ("    time.sleep(60)\n", {"timeout_s": 0.5}, ErrorType.TIMEOUT),
    "memory_kill": (
        "    hoard = []\n    while True:\n        hoard.append(bytearray(8_000_000))\n"
        "        time.sleep(0.005)\n",
        {"memory_mb": 150},
        ErrorType.MEMORY_LIMIT,
    ),
}

# Every death after a print, and every other writer before a death of its own.
CASES = [("print", death) for death in DEATHS] + [
    ("stderr", "os_exit"),
    ("subprocess", "os_exit"),
    ("os_system", "sigkill_itself"),
    ("fd1", "sigsegv"),
    ("fd2", "timeout_kill"),
    ("stderr", "memory_kill"),
]


@pytest.mark.parametrize(("writer", "death"), CASES, ids=[f"{w}-{d}" for w, d in CASES])
async def test_a_partial_line_survives_every_way_a_job_can_end(
    sup: Supervisor, writer: str, death: str
) -> None:
    body, limits, error_type = DEATHS[death]
    code = f"import ctypes, os, signal, subprocess, sys, time\ndef main():\n{WRITERS[writer]}{body}"
    request = function_request(code, limits=limits) if limits else function_request(code)
    events, response = await asyncio.wait_for(streamed(sup, request), 60)
    assert response.error_type == error_type, response.error
    assert response.stdout is not None and response.stdout.startswith(PARTIAL), response.stdout
    live = "".join(event.text for event in events if event.stream in ("stdout", "stderr"))
    assert live.startswith(PARTIAL)  # the live events had it too


INTERLEAVED = """
import logging, os, subprocess, sys

def main(round):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    print("1 print")
    print("2 stderr", file=sys.stderr)
    logging.info("3 info")
    os.write(2, b"4 fd2\\n")
    subprocess.run(["echo", "5 subprocess"])
    subprocess.run(["sh", "-c", "echo 6 subprocess stderr >&2"])
    logging.warning("7 warning")
    print("8 partial ", end="")
    print("9 stderr", file=sys.stderr)
    os.system("echo 10 system")
    sys.stderr.write("11 partial stderr ")
    print("12 last")
    return round
"""

INTERLEAVED_STDOUT = (
    "1 print\n2 stderr\nINFO: 3 info\n4 fd2\n5 subprocess\n6 subprocess stderr\n"
    "WARNING: 7 warning\n8 partial 9 stderr\n10 system\n11 partial stderr 12 last\n"
)

# As the live events give it, consecutive text of one stream joined: a raw write to fd 2 is
# stdout (one pipe cannot say which descriptor wrote), what sys.stderr wrote is stderr.
INTERLEAVED_EVENTS = [
    ("stdout", None, "1 print\n"),
    ("stderr", None, "2 stderr\n"),
    ("log", "INFO", "INFO: 3 info\n"),
    ("stdout", None, "4 fd2\n5 subprocess\n6 subprocess stderr\n"),
    ("log", "WARNING", "WARNING: 7 warning\n"),
    ("stdout", None, "8 partial "),
    ("stderr", None, "9 stderr\n"),
    ("stdout", None, "10 system\n"),
    ("stderr", None, "11 partial stderr "),
    ("stdout", None, "12 last\n"),
]


def joined(events: list[LogEvent]) -> list[tuple[str, str | None, str]]:
    """Events as (stream, level, text), consecutive text of one stream joined (how a pipe's
    output is cut into reads is not the job's doing)."""
    out: list[tuple[str, str | None, str]] = []
    for event in events:
        if out and event.stream in ("stdout", "stderr") and out[-1][0] == event.stream:
            out[-1] = (event.stream, None, out[-1][2] + event.text)
        else:
            out.append((event.stream, event.level, event.text))
    return out


async def test_output_is_in_program_order_across_every_writer_every_time(
    sup: Supervisor,
) -> None:
    for round_ in range(20):
        events, response = await streamed(sup, function_request(INTERLEAVED, args=[round_]))
        assert response.success and response.json_result == round_, response.error
        assert response.stdout == INTERLEAVED_STDOUT, f"round {round_}"
        assert joined(events) == INTERLEAVED_EVENTS, f"round {round_}"


TALKER = """
import logging, sys

logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")


class Talker:
    def say(self, word):
        print(f"{word} out")
        logging.info(f"{word} logged")
        print(f"{word} err", file=sys.stderr)
        print(f"{word} unfinished", end="")
        return word
"""


CREATING = "[sandvisor] creating instance "


async def test_each_instance_call_gets_exactly_its_own_output_in_order(
    sup: Supervisor,
) -> None:
    first = await sup.run(class_request("Talker", TALKER, "say", "a", create_new_instance=True))
    assert first.success, first.error
    assert first.stdout == f"{CREATING}{first.instance_id} of class Talker\n" + (
        "a out\nINFO: a logged\na err\na unfinished"
    )
    again = class_request(
        "Talker", TALKER, "say", "b", instance_id=first.instance_id, create_new_instance=False
    )
    second = await sup.run(again)
    assert second.success, second.error
    assert second.stdout == "b out\nINFO: b logged\nb err\nb unfinished"
