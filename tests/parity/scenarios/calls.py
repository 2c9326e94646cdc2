"""Parity rows: asyncio, generators, closures and lambdas as arguments."""

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
