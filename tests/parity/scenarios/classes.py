"""Parity rows: class_code variants: instances, methods, state between calls."""

from __future__ import annotations

from tests.parity.harness import Scenario

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
