"""Parity rows: The job's code as a real module, and relative imports between shipped ``modules``."""

from __future__ import annotations

from tests.parity.harness import Scenario

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
