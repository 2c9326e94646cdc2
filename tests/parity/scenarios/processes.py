"""Parity rows: multiprocessing in every start method, pools and executors on the job's own functions."""

from __future__ import annotations

from tests.parity.harness import Scenario

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
