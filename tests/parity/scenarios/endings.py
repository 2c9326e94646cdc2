"""Parity rows: Warnings, input, exits and deaths of every kind (partial lines before each), tracebacks."""

from __future__ import annotations

from tests.parity.harness import Scenario

WARNINGS_AND_INPUT = [
    Scenario(
        "warnings_user_warning_is_shown",
        """
        import warnings

        def main():
            warnings.warn("careful now")
            return "done"
        """,
    ),
    Scenario(
        "warnings_deprecation_hidden_outside_main",
        """
        import warnings

        def main():
            warnings.warn("old api", DeprecationWarning)
            return "done"
        """,
    ),
    Scenario(
        "warnings_recorded",
        """
        import warnings

        def main():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warnings.warn("first", RuntimeWarning)
                warnings.warn("second", FutureWarning)
            return [[str(w.message), w.category.__name__, w.filename, w.lineno] for w in caught]
        """,
    ),
    Scenario(
        "stdin_is_empty",
        """
        def main():
            try:
                input("prompt> ")
            except EOFError as exc:
                return f"EOFError: {exc}"
        """,
    ),
    Scenario(
        "unicode_output",
        """
        import sys

        def main():
            print("héllo ✓ 世界")
            sys.stderr.write("ошибка\\n")
            return "ü"
        """,
    ),
]


EXITS_AND_DEATHS = [
    Scenario(
        "sys_exit_zero",
        """
        import sys

        def main():
            print("leaving")
            sys.exit(0)
        """,
    ),
    Scenario(
        "sys_exit_code",
        """
        import sys

        def main():
            print("leaving", end="")
            sys.exit(3)
        """,
    ),
    Scenario(
        "sys_exit_message",
        """
        import sys

        def main():
            sys.exit("fatal: no input")
        """,
    ),
    Scenario(
        "os_exit_after_partial_line",
        """
        import os

        def main():
            print("whole line")
            print("partial", end="")
            os._exit(4)
        """,
    ),
    Scenario(
        "stderr_partial_then_os_exit",
        """
        import os
        import sys

        def main():
            sys.stderr.write("err-partial")
            os._exit(1)
        """,
    ),
    Scenario(
        "sigsegv_after_partial_line",
        """
        import os
        import signal

        def main():
            print("before the crash")
            print("partial", end="")
            os.kill(os.getpid(), signal.SIGSEGV)
        """,
    ),
    Scenario(
        "sigkill_after_partial_line",
        """
        import os
        import signal

        def main():
            print("partial", end="")
            os.kill(os.getpid(), signal.SIGKILL)
        """,
    ),
    Scenario(
        "sigterm_default_action",
        """
        import os
        import signal

        def main():
            print("terminating")
            os.kill(os.getpid(), signal.SIGTERM)
        """,
    ),
]


TRACEBACKS = [
    Scenario(
        "traceback_names_the_right_lines",
        """
        def inner(value):
            if value > 2:
                raise ValueError(f"too big: {value}")
            return value

        def outer(values):
            return [inner(v) for v in values]

        def main():
            print("working")
            return outer([1, 2, 3])
        """,
    ),
    Scenario(
        "traceback_chained_exceptions",
        """
        class ConfigError(Exception):
            pass

        def load():
            try:
                {}["missing"]
            except KeyError as exc:
                raise ConfigError("no setting 'missing'") from exc

        def main():
            load()
        """,
    ),
    Scenario(
        "traceback_format_exc_inside_the_job",
        """
        import traceback

        def fail():
            raise RuntimeError("inside")

        def main():
            try:
                fail()
            except RuntimeError:
                return traceback.format_exc().splitlines()
        """,
    ),
    Scenario(
        "exception_in_the_module_body",
        """
        SETTINGS = {"a": 1}
        VALUE = SETTINGS["b"]

        def main():
            return VALUE
        """,
    ),
]


def _exit_row(name: str, code: str) -> Scenario:
    return Scenario(f"sys_exit_{name}", f"import sys\n\ndef main():\n    sys.exit({code})\n")


#: Endings that are not an Exception: the job's BaseException, a failing __str__, odd exits.
UNUSUAL_ENDINGS = [
    Scenario(
        "keyboard_interrupt_after_output",
        """
        def main():
            print("before")
            raise KeyboardInterrupt
        """,
    ),
    Scenario("generator_exit", "def main():\n    raise GeneratorExit('ge')\n"),
    Scenario(
        "base_exception_of_the_job",
        """
        class Stop(BaseException):
            pass

        def main():
            raise Stop("custom base")
        """,
    ),
    Scenario(
        "keyboard_interrupt_in_the_module_body",
        "raise KeyboardInterrupt('at import')\n\ndef main():\n    return 1\n",
    ),
    Scenario(
        "cancelled_error_in_async_main",
        """
        import asyncio

        async def main():
            await asyncio.sleep(0)
            raise asyncio.CancelledError("c")
        """,
    ),
    *(
        Scenario(
            f"exception_str_{name}",
            f"""
            class Odd(Exception):
                def __str__(self):
                    {body}

            def main():
                raise Odd("x")
            """,
        )
        for name, body in (
            ("raises", "raise ValueError('str boom')"),
            ("is_not_a_string", "return 42"),
            ("raises_keyboard_interrupt", "raise KeyboardInterrupt"),
        )
    ),
    Scenario(
        "deep_recursion_shows_the_last_entries",
        """
        import sys

        sys.setrecursionlimit(5000)

        def down(n):
            return down(n + 1)

        def main():
            return down(0)
        """,
    ),
    _exit_row("none", "None"),
    _exit_row("int_over_a_c_long", "2 ** 100"),
    _exit_row("largest_c_long", "2 ** 63 - 1"),
    _exit_row("negative", "-1"),
    _exit_row("over_255", "256 + 3"),
    _exit_row("float", "1.5"),
    _exit_row("list", "[1, 'two']"),
    Scenario(
        "class_method_raises_keyboard_interrupt",
        """
        class Worker:
            def stop(self):
                print("stopping")
                raise KeyboardInterrupt("by hand")
        """,
        class_name="Worker",
        method="stop",
    ),
    Scenario(
        "class_constructor_raises_base_exception",
        """
        class Refused(BaseException):
            pass

        class Worker:
            def __init__(self):
                raise Refused("not today")

            def run(self):
                return 1
        """,
        class_name="Worker",
        method="run",
    ),
]
