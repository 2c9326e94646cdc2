"""How the child describes an ending: exit statuses as CPython's, and reports no user hook breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from sandvisor.protocol.frames import read_frame
from sandvisor.protocol.messages import CHANNEL_BROKEN_EXIT
from sandvisor.protocol.text import STR_FAILED, exception_line, safe_str, wire_safe
from sandvisor.sandbox_child.channel import Channel, ChannelReplaced
from sandvisor.sandbox_child.display import display_of
from sandvisor.sandbox_child.failures import JobFailure, user_code, user_failure
from sandvisor.sandbox_child.runner import exit_code_of, runtime_failed

EXIT_VALUES = [
    "None",
    "0",
    "3",
    "256 + 3",
    "-1",
    "-(2 ** 63)",
    "-(2 ** 63) - 1",
    "2 ** 63 - 1",
    "2 ** 100",
    "True",
    "'fatal: no input'",
    "1.5",
    "[1, 'two']",
    "()",
]


@pytest.mark.parametrize("value", EXIT_VALUES, ids=EXIT_VALUES)
def test_exit_statuses_are_cpython_s(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    python = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.exit({value})"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert exit_code_of(SystemExit(eval(value))) == python.returncode
    assert capsys.readouterr().err == python.stderr


class StrRaises(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


class StrNotAString(Exception):
    def __str__(self) -> Any:
        return 42


class ReprRaises:
    def __repr__(self) -> str:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        pytest.param(ValueError("a\nb"), "ValueError: a", id="first_line"),
        pytest.param(KeyboardInterrupt(), "KeyboardInterrupt", id="empty_message"),
        pytest.param(StrRaises("x"), f"StrRaises: {STR_FAILED}", id="str_raises"),
        pytest.param(StrNotAString("x"), f"StrNotAString: {STR_FAILED}", id="str_not_a_string"),
        pytest.param(ValueError("bad \ud800"), "ValueError: bad \\ud800", id="lone_surrogate"),
    ],
)
def test_an_exception_s_line_never_fails(exc: BaseException, line: str) -> None:
    assert exception_line(exc) == line
    line.encode("utf-8")


def test_safe_str_and_wire_safe() -> None:
    assert safe_str(StrRaises()) == STR_FAILED
    assert safe_str(3) == "3"
    assert wire_safe("plain ✓") == "plain ✓"
    assert wire_safe("a\udcff") == "a\\udcff"


@pytest.mark.parametrize(
    "raised",
    [KeyboardInterrupt("k"), GeneratorExit(), StrRaises(), ValueError("v")],
    ids=["keyboard_interrupt", "generator_exit", "str_raises", "exception"],
)
def test_whatever_the_job_raises_but_system_exit_is_its_failure(raised: BaseException) -> None:
    with pytest.raises(JobFailure) as caught, user_code(set()):
        raise raised
    assert caught.value.kind == "user_exception"
    assert caught.value.summary == exception_line(raised)
    detail = caught.value.detail
    assert detail.startswith("Traceback (most recent call last):\n")
    assert detail.rstrip().endswith(caught.value.summary.removeprefix(type(raised).__name__))


def test_system_exit_passes_through_user_code() -> None:
    with pytest.raises(SystemExit), user_code(set()):
        raise SystemExit(3)


def test_a_traceback_shows_its_last_thousand_entries() -> None:
    def down(n: int) -> int:
        return down(n + 1) if n < 3000 else 1 // 0

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)
    try:
        down(0)
    except ZeroDivisionError as exc:
        failure = user_failure(exc, set())
    finally:
        sys.setrecursionlimit(limit)
    # 1000 entries, all the same line of ``down``: three shown, as the interpreter shows them.
    assert failure.detail.count(", in down\n") == 3
    assert "[Previous line repeated 997 more times]" in failure.detail


@pytest.mark.parametrize(
    ("value", "display"),
    [
        pytest.param({"a": 1}, '{\n  "a": 1\n}', id="json"),
        pytest.param(ReprRaises(), "<unrepresentable ReprRaises: KeyboardInterrupt>", id="repr"),
        pytest.param("\ud800", '"\\ud800"', id="lone_surrogate"),
    ],
)
def test_a_display_never_fails(value: Any, display: str) -> None:
    assert display_of(value) == display


def test_a_runtime_failure_is_lost_with_its_traceback_as_detail() -> None:
    reader, writer = os.pipe()
    try:
        try:
            raise RuntimeError("runtime bug")
        except RuntimeError as exc:
            assert runtime_failed(Channel(writer), exc) == CHANNEL_BROKEN_EXIT
        frame = read_frame(reader)
    finally:
        os.close(reader)
        os.close(writer)
    assert frame["kind"] == "lost"
    assert frame["summary"] == "lost: sandvisor's job runtime failed (RuntimeError: runtime bug)"
    assert frame["detail"].startswith("Traceback (most recent call last):")


def test_a_channel_never_writes_to_what_replaced_it(tmp_path: Any) -> None:
    reader, writer = os.pipe()
    channel = Channel(writer)
    channel.pin()
    stand_in = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT)
    try:
        os.dup2(stand_in, writer)
        with pytest.raises(ChannelReplaced):
            channel.send({"t": "result"})
        assert runtime_failed(channel, ChannelReplaced("replaced")) == CHANNEL_BROKEN_EXIT
    finally:
        for fd in (reader, writer, stand_in):
            os.close(fd)
    assert (tmp_path / "file").read_bytes() == b""
