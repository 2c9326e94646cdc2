"""Parity rows: Dataclasses, enums, pydantic models and typing, and pickling what a job defines."""

from __future__ import annotations

from tests.parity.harness import Scenario

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
