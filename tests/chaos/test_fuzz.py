"""Fuzz: random and malformed requests thrown at ``Supervisor.run``.

Every one gets a FunctionResponse (a failure with a reason, or a success), none raises, none
hangs. One supervisor serves all examples, on one event loop driven by the test itself, because
hypothesis calls the test body synchronously.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.chaos.chaos_helpers import HELLO, settled, zombies_of_ours
from tests.helpers import make_settings

from sandvisor.protocol.codec import encode_value
from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor

pytestmark = pytest.mark.chaos

ANSWER_WITHIN_S = 60.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

SNIPPETS = [
    "def main(*args, **kwargs):\n    return [args, kwargs]\n",
    "def main():\n    raise ValueError('no')\n",
    "async def main(x=1):\n    return x\n",
    "class main:\n    def __call__(self):\n        return 1\n",
    "import os\ndef main():\n    os._exit(9)\n",
    "def main(:\n",
    "print('top level only')\n",
    "",
]

codes = st.sampled_from(SNIPPETS) | st.text(max_size=60)
names = st.sampled_from(["main", "missing", "", "__init__", "os"]) | st.text(max_size=10)

limits = (
    st.fixed_dictionaries(
        {},
        optional={
            "timeout_s": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 30),
            "memory_mb": st.integers(-10, 10**9),
            "cpu_s": st.floats(min_value=-1, max_value=30),
            "max_procs": st.integers(-1, 1000),
            "max_output_bytes": st.integers(-1, 10**7),
            "max_result_bytes": st.integers(-1, 10**7),
            "max_open_files": st.integers(-1, 100000),
            "gpus": st.integers(-1, 4),
            "bogus": json_values,
        },
    )
    | json_values
)

argument_lists = st.lists(
    st.sampled_from([encode_value(1), encode_value("x"), "not base64!", ""]) | json_values,
    max_size=3,
)

function_requests = st.fixed_dictionaries(
    {"function_name": names, "function_code": codes},
    optional={
        "args": argument_lists | json_values,
        "kwargs": st.dictionaries(st.text(max_size=5), json_values, max_size=2) | json_values,
        "serialization_format": st.sampled_from(["json", "cloudpickle", "yaml"]) | json_values,
        "execution_type": st.sampled_from(["function", "class", "nonsense"]),
        "class_name": names,
        "method_name": names,
        "modules": st.dictionaries(
            st.sampled_from(["a.py", "../up.py", "/abs.py", "pkg/b.py", "c.txt", ""]),
            st.text(max_size=30),
            max_size=2,
        ),
        "limits": limits,
        "dependencies": st.lists(st.sampled_from(["", "-e .", "not a req!!", "==1"]), max_size=1),
        "instance_id": st.text(max_size=5),
    },
)

# Mostly right, so that jobs do run: known snippets, JSON arguments, limits within bounds.
wellformed = st.fixed_dictionaries(
    {
        "function_name": st.just("main"),
        "function_code": st.sampled_from(SNIPPETS),
        "serialization_format": st.just("json"),
        "args": st.lists(json_values, max_size=2),
    },
    optional={
        "kwargs": st.dictionaries(st.sampled_from(["x", "y"]), json_values, max_size=2),
        "limits": st.fixed_dictionaries(
            {},
            optional={
                "timeout_s": st.floats(min_value=0.05, max_value=5),
                "memory_mb": st.integers(1, 2048),
                "max_procs": st.integers(1, 64),
                "max_output_bytes": st.integers(0, 10**6),
                "max_result_bytes": st.integers(0, 10**6),
                "max_open_files": st.integers(1, 4096),
            },
        ),
    },
)

requests = st.one_of(
    wellformed,
    wellformed,
    function_requests,
    st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    json_values,
)


@pytest.mark.timeout(600)
def test_every_request_gets_an_answer(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    sup = Supervisor(
        make_settings(tmp_path / "home", timeout_s=10.0, max_timeout_s=30.0, memory_mb=2048)
    )
    loop.run_until_complete(sup.__aenter__())
    try:

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        )
        @given(request=requests)
        def one(request: Any) -> None:
            response = loop.run_until_complete(asyncio.wait_for(sup.run(request), ANSWER_WITHIN_S))
            assert isinstance(response, FunctionResponse)
            if not response.success:
                assert response.error and response.error_type is not None, response

        one()
        # Still serving, and nothing of the fuzzed jobs is left.
        assert loop.run_until_complete(sup.run(HELLO)).success
        assert sup.running_jobs == []
    finally:
        loop.run_until_complete(sup.__aexit__(None, None, None))
        loop.close()
    assert settled(zombies_of_ours) == []
