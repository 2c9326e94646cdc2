"""Parity rows: The rows that must differ from plain Python, each with why."""

from __future__ import annotations

from tests.parity.harness import Scenario

DIFFERENCES = [
    Scenario(
        "syntax_error_is_an_invalid_request",
        """
        def main(:
            return 1
        """,
        differs={
            "end": "invalid",
            "error": "invalid request: syntax error in function_code at line 1: invalid syntax",
            "traceback": (),
        },
        why="code that does not compile is the request's fault (invalid_request), not a raise",
    ),
    Scenario(
        "atexit_hooks_do_not_run",
        """
        import atexit

        def main():
            atexit.register(print, "at exit")
            return "returned"
        """,
        differs={"output": ()},
        why="a job ends when its function returns (as in worker-flash's long-lived worker): "
        "the child leaves with os._exit, so atexit hooks of the job never run",
    ),
    Scenario(
        "output_limit_keeps_head_and_tail",
        """
        def main():
            for i in range(200):
                print(f"line {i:03d} " + "x" * 40)
            return "done"
        """,
        limits={"max_output_bytes": 1000},
        # 50 bytes a line: 500 bytes are the first 10 lines, 500 more the last 10; between
        # them a blank line and sandvisor's note of what it dropped (a note: not compared).
        differs={"output": lambda lines: (*lines[:10], "", *lines[-10:])},
        why="the output limit keeps the first and last halves of max_output_bytes",
    ),
]
