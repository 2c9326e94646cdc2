"""A forked job child starts from the default signal dispositions, whatever its template set."""

from __future__ import annotations

import json
import os
import signal

from sandvisor.sandbox_child.isolation import reset_signals


def dispositions_after_reset_in_a_fork() -> dict[str, object]:
    """Fork, set handlers as a template has them, reset, and report what the child sees."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            _, wakeup_w = os.pipe()
            os.set_blocking(wakeup_w, False)
            signal.set_wakeup_fd(wakeup_w)
            signal.signal(signal.SIGCHLD, lambda *_: None)
            signal.signal(signal.SIGTERM, lambda *_: None)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            reset_signals()
            seen = {
                "SIGCHLD": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
                "SIGTERM": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                "SIGHUP": signal.getsignal(signal.SIGHUP) == signal.SIG_DFL,
                "SIGINT": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                "SIGPIPE": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
                "wakeup": signal.set_wakeup_fd(-1) == -1,
            }
            os.write(write_end, json.dumps(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        text = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(text)


def test_a_forked_child_gets_default_dispositions_and_no_wakeup_fd() -> None:
    assert dispositions_after_reset_in_a_fork() == {
        "SIGCHLD": True,
        "SIGTERM": True,
        "SIGHUP": True,
        "SIGINT": True,
        "SIGPIPE": True,
        "wakeup": True,
    }
