"""The parity table: ordinary Python programs that must behave under sandvisor as under ``python``.

One :class:`Scenario` per row; ``test_parity`` runs each both ways and compares the answers.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.parity.harness import Scenario


def counter_closure(start: int) -> Callable[[], int]:
    """A closure with state of its own: cloudpickle ships it by value (it is a local)."""
    count = start

    def counter() -> int:
        nonlocal count
        count += 1
        return count

    return counter


DATACLASSES = [
    Scenario(
        "dataclass_asdict",
        """
        from dataclasses import dataclass, asdict

        @dataclass
        class Point:
            x: float
            y: float

        def main():
            return asdict(Point(1.5, 2.0))
        """,
    ),
    Scenario(
        "dataclass_frozen_order_replace",
        """
        from dataclasses import dataclass, field, replace

        @dataclass(frozen=True, order=True)
        class Version:
            major: int
            minor: int = 0
            tags: tuple = field(default_factory=tuple, compare=False)

        def main():
            versions = sorted([Version(2, 1), Version(1, 9), Version(2, 0)])
            bumped = replace(versions[0], minor=10)
            try:
                bumped.major = 5
            except Exception as exc:
                frozen = type(exc).__name__
            return [repr(v) for v in versions] + [repr(bumped), frozen]
        """,
    ),
    Scenario(
        "dataclass_future_annotations_kw_only_slots",
        """
        from __future__ import annotations
        from dataclasses import KW_ONLY, dataclass, fields

        @dataclass(slots=True)
        class Job:
            name: str
            _: KW_ONLY
            retries: int = 3
            parent: Job | None = None

        def main():
            job = Job("b", retries=1, parent=Job("a"))
            return [[f.name, f.type] for f in fields(Job)] + [repr(job), hasattr(job, "__dict__")]
        """,
    ),
    Scenario(
        "annotations_are_not_strings",
        """
        def scale(x: int, factor: float = 2.0) -> float:
            return x * factor

        def main():
            return {name: repr(kind) for name, kind in scale.__annotations__.items()}
        """,
    ),
    Scenario(
        "get_type_hints_forward_refs",
        """
        import typing
        from typing import Optional

        class Node:
            value: int
            next: Optional["Node"]
            children: "list[Leaf]"

        class Leaf:
            label: str

        def walk(node: "Node", depth: "Optional[int]" = None) -> "list[Leaf]":
            return []

        def main():
            return [repr(typing.get_type_hints(Node)), repr(typing.get_type_hints(walk))]
        """,
    ),
    Scenario(
        "get_type_hints_future_module",
        """
        from __future__ import annotations
        import typing

        class Config:
            limit: int
            owner: Owner

        class Owner:
            name: str

        def main():
            return [Config.__annotations__, repr(typing.get_type_hints(Config))]
        """,
    ),
]

ENUMS_AND_PYDANTIC = [
    Scenario(
        "enum_members_flags_and_pickle",
        """
        import enum
        import pickle

        class Color(enum.Enum):
            RED = enum.auto()
            GREEN = enum.auto()

        class Perm(enum.Flag):
            R = 4
            W = 2
            X = 1

        def main():
            same = pickle.loads(pickle.dumps(Color.GREEN)) is Color.GREEN
            return [[m.name for m in Color], Color(2).name, str(Perm.R | Perm.W), same]
        """,
    ),
    Scenario(
        "pydantic_optional_and_defaults",
        """
        from typing import Optional
        from pydantic import BaseModel, Field

        class User(BaseModel):
            name: str
            age: Optional[int] = None
            tags: list[str] = Field(default_factory=list)

        def main():
            return User(name="ada", tags=["x"]).model_dump()
        """,
    ),
    Scenario(
        "pydantic_forward_ref_recursive",
        """
        from __future__ import annotations
        from pydantic import BaseModel

        class Tree(BaseModel):
            label: str
            children: list[Tree] = []
            owner: Owner | None = None

        class Owner(BaseModel):
            name: str

        Tree.model_rebuild()

        def main():
            tree = Tree.model_validate(
                {"label": "root", "children": [{"label": "leaf"}], "owner": {"name": "ada"}}
            )
            return tree.model_dump()
        """,
    ),
    Scenario(
        "pydantic_validation_error",
        """
        from pydantic import BaseModel

        class Item(BaseModel):
            count: int

        def main():
            Item(count="many")
        """,
    ),
    Scenario(
        "pydantic_model_pickles",
        """
        import copy
        import pickle
        from pydantic import BaseModel

        class Item(BaseModel):
            name: str
            count: int = 1

        def main():
            item = Item(name="bolt", count=3)
            back = pickle.loads(pickle.dumps(item))
            return [back == item, copy.deepcopy(item).model_dump(), type(back) is Item]
        """,
    ),
]

PICKLING = [
    Scenario(
        "pickle_and_deepcopy_of_job_classes",
        """
        import copy
        import pickle

        class Account:
            def __init__(self, owner, balance):
                self.owner = owner
                self.balance = balance
                self.history = [balance]

            def __eq__(self, other):
                return vars(self) == vars(other)

        def main():
            account = Account("ada", 10)
            back = pickle.loads(pickle.dumps(account))
            deep = copy.deepcopy(account)
            return [back == account, type(back) is Account, deep.history is not account.history,
                    pickle.dumps(account).count(b"Account") > 0]
        """,
    ),
    Scenario(
        "pickle_functions_by_reference",
        """
        import pickle

        def double(x):
            return 2 * x

        def main():
            data = pickle.dumps(double)
            return [pickle.loads(data) is double, b"function_code" in data]
        """,
    ),
    Scenario(
        "namedtuple_typeddict_pickle",
        """
        import pickle
        from typing import NamedTuple, TypedDict

        class Pair(NamedTuple):
            left: int
            right: int

        class Movie(TypedDict):
            title: str

        def main():
            pair = pickle.loads(pickle.dumps(Pair(1, 2)))
            return [repr(pair), type(pair).__module__, Movie(title="x"), list(Movie.__annotations__)]
        """,
    ),
    Scenario(
        "cloudpickle_result_is_a_job_instance",
        """
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: int

            def norm1(self):
                return abs(self.x) + abs(self.y)

        def main():
            return Point(3, -4)
        """,
        fmt="cloudpickle",
    ),
    Scenario(
        "cloudpickle_result_is_a_job_enum",
        """
        import enum

        class Level(enum.IntEnum):
            LOW = 1
            HIGH = 2

        def main():
            return [Level.HIGH, Level(1)]
        """,
        fmt="cloudpickle",
    ),
]

MULTIPROCESSING = [
    Scenario(
        "mp_fork_process_and_queue",
        """
        import multiprocessing as mp

        def work(queue, n):
            queue.put(sum(range(n)))

        def main():
            ctx = mp.get_context("fork")
            queue = ctx.Queue()
            process = ctx.Process(target=work, args=(queue, 10))
            process.start()
            value = queue.get(timeout=30)
            process.join()
            return [value, process.exitcode]
        """,
    ),
    Scenario(
        "mp_spawn_pool_with_job_class",
        """
        import multiprocessing as mp
        from dataclasses import dataclass

        @dataclass
        class Box:
            size: int

        def grow(box):
            return Box(box.size * 10)

        def main():
            with mp.get_context("spawn").Pool(2) as pool:
                boxes = pool.map(grow, [Box(1), Box(2), Box(3)])
            return [repr(b) for b in boxes]
        """,
    ),
    Scenario(
        "mp_forkserver_pool_with_job_class",
        """
        import multiprocessing as mp
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class Side:
            length: int

        def square(side):
            return Side(side.length * side.length)

        def main():
            with mp.get_context("forkserver").Pool(2) as pool:
                return [repr(s) for s in pool.map(square, [Side(n) for n in range(4)])]
        """,
    ),
    Scenario(
        "mp_spawn_process_exit_code",
        """
        import multiprocessing as mp
        import sys

        def leave(code):
            sys.exit(code)

        def main():
            process = mp.get_context("spawn").Process(target=leave, args=(7,))
            process.start()
            process.join()
            return [process.exitcode, __name__]
        """,
    ),
    Scenario(
        "process_pool_executor_default",
        """
        from concurrent.futures import ProcessPoolExecutor

        def cube(x):
            return x ** 3

        def main():
            with ProcessPoolExecutor(max_workers=2) as pool:
                return list(pool.map(cube, range(5)))
        """,
    ),
    Scenario(
        "process_pool_executor_spawn_module_class",
        """
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from shapes import Square

        def area(square):
            return square.area()

        def main():
            with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
                return list(pool.map(area, [Square(2), Square(3)]))
        """,
        modules={
            "shapes.py": """
from dataclasses import dataclass


@dataclass
class Square:
    side: int

    def area(self):
        return self.side * self.side
""",
        },
    ),
    Scenario(
        "mp_fork_child_output_order",
        """
        import multiprocessing as mp

        def speak():
            print("from the child")

        def main():
            print("before")
            process = mp.get_context("fork").Process(target=speak)
            process.start()
            process.join()
            print("after")
        """,
    ),
]

ASYNC_AND_CALLABLES = [
    Scenario(
        "async_function_gather",
        """
        import asyncio

        async def square(x):
            await asyncio.sleep(0)
            return x * x

        async def main(n):
            return await asyncio.gather(*(square(i) for i in range(n)))
        """,
        args=(5,),
    ),
    Scenario(
        "asyncio_run_inside_and_async_generator",
        """
        import asyncio

        async def ticks(n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i

        async def collect():
            return [i async for i in ticks(4)]

        def main():
            return asyncio.run(collect())
        """,
    ),
    Scenario(
        "generators_send_and_close",
        """
        def accumulate():
            total = 0
            try:
                while True:
                    total += yield total
            finally:
                print(f"closed at {total}")

        def main():
            gen = accumulate()
            next(gen)
            seen = [gen.send(i) for i in (1, 2, 3)]
            gen.close()
            return seen
        """,
    ),
    Scenario(
        "lambda_argument",
        """
        def main(f, values):
            return [f(v) for v in values]
        """,
        args=(lambda v: v * 3 + 1, [1, 2, 3]),
        fmt="cloudpickle",
    ),
    Scenario(
        "closure_argument_with_state",
        """
        def main(counter):
            return [counter() for _ in range(3)]
        """,
        args=(counter_closure(start=10),),
        fmt="cloudpickle",
    ),
    Scenario(
        "lambda_kwarg_sort_key",
        """
        def main(words, key=None):
            return sorted(words, key=key)
        """,
        args=(["ccc", "a", "bb"],),
        kwargs={"key": lambda word: -len(word)},
        fmt="cloudpickle",
    ),
]

MODULE_IDENTITY = [
    Scenario(
        "name_file_spec_and_sys_modules",
        """
        import sys

        def main():
            module = sys.modules[__name__]
            return {
                "name": __name__,
                "file": __file__,
                "spec": __spec__.name,
                "origin": __spec__.origin,
                "registered": module.main is main,
                "is_main": __name__ == "__main__",
            }
        """,
    ),
    Scenario(
        "main_guard_does_not_run_on_import",
        """
        print("module body runs")

        def main():
            return "called"

        if __name__ == "__main__":
            print("ran as a script")
        """,
    ),
    Scenario(
        "qualnames_and_modules",
        """
        class Outer:
            class Inner:
                def method(self):
                    pass

        def main():
            def local():
                pass
            return [Outer.Inner.__qualname__, Outer.Inner.method.__qualname__,
                    Outer.__module__, local.__qualname__, main.__module__]
        """,
    ),
    Scenario(
        "sys_path_and_cwd_are_the_jobs",
        """
        import os
        import sys

        def main():
            try:
                import tests  # the repository's own package: never on a job's path
                found = tests.__name__
            except ImportError:
                found = None
            return [sys.path[0], os.getcwd(), found]
        """,
    ),
    Scenario(
        "inspect_getsource_of_job_code",
        """
        import inspect

        def helper(x):
            # doubled
            return 2 * x

        class Thing:
            def act(self):
                return 1

        def main():
            return [inspect.getsource(helper), inspect.getsourcelines(Thing.act)[1],
                    inspect.getmodule(helper).__name__, inspect.getfile(Thing)]
        """,
    ),
    Scenario(
        "functools_abc_and_metaclass_registry",
        """
        import abc
        import functools

        registry = []

        class Registered(type):
            def __init__(cls, name, bases, ns):
                super().__init__(name, bases, ns)
                registry.append(name)

        class Base(abc.ABC, metaclass=type("Meta", (abc.ABCMeta, Registered), {})):
            @abc.abstractmethod
            def run(self): ...

        class Impl(Base):
            def run(self):
                return "ran"

        @functools.singledispatch
        def show(value):
            return "thing"

        @show.register
        def _(value: int):
            return "int"

        def main():
            try:
                Base()
            except TypeError as exc:
                abstract = str(exc)
            return [registry, Impl().run(), show(1), show("x"), abstract]
        """,
    ),
]

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

OUTPUT_AND_LOGGING = [
    Scenario(
        "print_and_stderr_interleaved",
        """
        import sys

        def main():
            print("one")
            print("two", file=sys.stderr)
            print("three")
            sys.stderr.write("four\\n")
            return 4
        """,
    ),
    Scenario(
        "logging_unconfigured_warning",
        """
        import logging

        def main():
            print("before")
            logging.warning("disk at %d%%", 91)
            print("after")
        """,
    ),
    Scenario(
        "logging_basic_config",
        """
        import logging
        import sys

        def main():
            logging.basicConfig(level=logging.DEBUG, format="%(levelname)s|%(name)s|%(message)s")
            logging.getLogger("app").debug("debugging")
            logging.info("informing")
            print("printed", file=sys.stderr)
        """,
    ),
    Scenario(
        "logging_custom_handler_to_stdout",
        """
        import logging
        import sys

        def main():
            logger = logging.getLogger("job")
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.debug("detail")
            print("between")
            logger.error("bad")
        """,
    ),
    Scenario(
        "argparse_sees_no_runtime_flags",
        """
        import argparse
        import sys

        def main():
            parser = argparse.ArgumentParser()
            parser.add_argument("--verbose", action="store_true")
            return [sys.argv[1:], vars(parser.parse_args())]
        """,
    ),
    Scenario(
        "logging_named_logger_last_resort",
        """
        import logging

        def main():
            logging.getLogger("app.db").error("no handler anywhere: %s", "last resort")
            print("after")
        """,
    ),
    Scenario(
        "logging_exception_with_traceback",
        """
        import logging

        def main():
            logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
            try:
                {}["missing"]
            except KeyError:
                logging.getLogger("job").exception("lookup failed")
            return "handled"
        """,
    ),
    Scenario(
        "logging_dict_config_to_stdout_and_stderr",
        """
        import logging
        import logging.config
        import threading

        def main():
            logging.config.dictConfig({
                "version": 1,
                "formatters": {"short": {"format": "%(threadName)s %(levelname)s %(message)s"}},
                "handlers": {
                    "out": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                            "formatter": "short", "level": "DEBUG"},
                    "err": {"class": "logging.StreamHandler", "formatter": "short",
                            "level": "ERROR"},
                },
                "root": {"level": "DEBUG", "handlers": ["out", "err"]},
            })
            logging.debug("debug")
            worker = threading.Thread(target=logging.error, args=("from a thread",), name="w1")
            worker.start()
            worker.join()
            logging.info("done")
        """,
    ),
    Scenario(
        "logging_info_without_config_is_hidden",
        """
        import logging

        def main():
            logging.getLogger("quiet").info("not shown by default")
            return "done"
        """,
    ),
    Scenario(
        "threads_and_thread_pool",
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        def main():
            results = {}
            def work(i):
                results[i] = i * i
            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with ThreadPoolExecutor(3) as pool:
                pooled = list(pool.map(lambda x: x + 1, range(5)))
            print("threads done")
            return [sorted(results.items()), pooled, threading.current_thread().name]
        """,
    ),
]

MODULES = [
    Scenario(
        "relative_imports_in_a_package",
        """
        from geometry import circle_area, describe

        def main():
            return [circle_area(2), describe()]
        """,
        modules={
            "geometry/__init__.py": "from .shapes import circle_area\nfrom .info import describe\n",
            "geometry/shapes.py": "from . import consts\n\n\ndef circle_area(r):\n    return consts.PI * r * r\n",
            "geometry/consts.py": "PI = 3.0\n",
            "geometry/info.py": (
                "from .consts import PI\n\n\ndef describe():\n"
                "    return [__name__, __package__, __file__, PI]\n"
            ),
        },
    ),
    Scenario(
        "traceback_through_a_shipped_module",
        """
        import helpers

        def main():
            return helpers.parse("x")
        """,
        modules={
            "helpers.py": "def parse(text):\n    return int(text)\n",
        },
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

CLASSES = [
    Scenario(
        "class_code_method_with_state",
        """
        class Counter:
            def __init__(self, start, step=1):
                self.value = start
                self.step = step
                print(f"constructed at {start}")

            def add(self, times):
                for _ in range(times):
                    self.value += self.step
                return self.value
        """,
        class_name="Counter",
        method="add",
        ctor_args=(10,),
        ctor_kwargs={"step": 5},
        args=(3,),
    ),
    Scenario(
        "class_code_dataclass_and_call",
        """
        from dataclasses import dataclass, asdict

        @dataclass
        class Settings:
            size: int
            name: str = "model"

        class Service:
            def __init__(self, size):
                self.settings = Settings(size)

            def __call__(self, suffix):
                return asdict(self.settings) | {"suffix": suffix}
        """,
        class_name="Service",
        ctor_args=(7,),
        args=("x",),
    ),
    Scenario(
        "class_code_async_method",
        """
        import asyncio

        class Fetcher:
            async def fetch(self, n):
                await asyncio.sleep(0)
                return list(range(n))
        """,
        class_name="Fetcher",
        method="fetch",
        args=(3,),
    ),
    Scenario(
        "class_code_method_raises",
        """
        class Strict:
            def check(self, value):
                if value < 0:
                    raise ValueError(f"negative: {value}")
                return value
        """,
        class_name="Strict",
        method="check",
        args=(-1,),
    ),
    Scenario(
        "class_code_missing_method",
        """
        class Small:
            def __init__(self):
                print("constructed")

            def real(self):
                return 1
        """,
        class_name="Small",
        method="imaginary",
        differs={
            "end": "invalid",
            "error": "invalid request: method_name 'imaginary' is not a method of class 'Small'",
            "traceback": (),
            "output": (),
        },
        why="a request naming a missing method is invalid, refused before the constructor runs",
    ),
]

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
    *CLASSES,
    *DIFFERENCES,
]
