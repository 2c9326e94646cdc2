"""An instance whose creation failed was never created: not answered, not kept live.

Whatever stops it (no such class, no such method for the request that creates it, arguments
that cannot be decoded, a constructor that raises or crashes), the answer has no
``instance_id`` and no ``instance_info``, the registry holds nothing, and a later request for
that id with ``create_new_instance: false`` is not told the instance "was lost".
An invalid call on an instance that does exist leaves it live, as a raising method does.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers import class_request

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor

GREETER = (
    "import os\n"
    "class Greeter:\n"
    "    def __init__(self, mood='fine'):\n"
    "        if mood == 'raise':\n"
    "            raise RuntimeError('no mood')\n"
    "        if mood == 'interrupt':\n"
    "            raise KeyboardInterrupt('no patience')\n"
    "        if mood == 'crash':\n"
    "            os._exit(5)\n"
    "    def hello(self):\n"
    "        return 'hello'\n"
)

#: name, request fields over a call of Greeter.hello, expected error_type
ROWS: list[tuple[str, dict[str, Any], ErrorType]] = [
    ("no_such_class", {"class_name": "Nobody"}, ErrorType.INVALID_REQUEST),
    ("no_such_method", {"method_name": "nowhere"}, ErrorType.INVALID_REQUEST),
    (
        "method_args_not_base64",
        {"args": ["!!"], "serialization_format": "cloudpickle"},
        ErrorType.INVALID_REQUEST,
    ),
    (
        "constructor_args_not_base64",
        {"constructor_args": ["!!"], "serialization_format": "cloudpickle"},
        ErrorType.INVALID_REQUEST,
    ),
    ("constructor_raises", {"constructor_args": ["raise"]}, ErrorType.USER_EXCEPTION),
    (
        "constructor_raises_keyboard_interrupt",
        {"constructor_args": ["interrupt"]},
        ErrorType.USER_EXCEPTION,
    ),
    ("constructor_exits", {"constructor_args": ["crash"]}, ErrorType.EXIT),
]


@pytest.mark.parametrize(
    ("fields", "error_type"), [pytest.param(*row[1:], id=row[0]) for row in ROWS]
)
async def test_a_failed_creation_leaves_no_instance(
    supervisor: Supervisor, fields: dict[str, Any], error_type: ErrorType
) -> None:
    assert supervisor.instances is not None
    request = class_request("Greeter", GREETER, "hello", instance_id="g1") | fields
    response = await supervisor.run(request)
    assert response.error_type is error_type, response.error
    assert response.instance_id is None and response.instance_info is None
    assert supervisor.instances.live == {}

    again = await supervisor.run(
        class_request("Greeter", GREETER, "hello", instance_id="g1", create_new_instance=False)
    )
    assert again.success, again.error
    assert "was lost" not in (again.stdout or "")
    assert again.instance_id == "g1" and list(supervisor.instances.live) == ["g1"]


async def test_an_invalid_call_on_a_live_instance_leaves_it_live(supervisor: Supervisor) -> None:
    assert supervisor.instances is not None
    made = await supervisor.run(class_request("Greeter", GREETER, "hello", instance_id="g2"))
    assert made.success, made.error
    wrong = await supervisor.run(
        class_request("Greeter", GREETER, "nowhere", instance_id="g2", create_new_instance=False)
    )
    assert wrong.error_type is ErrorType.INVALID_REQUEST
    assert wrong.instance_id == "g2"
    assert wrong.instance_info is not None and wrong.instance_info["alive"]
    assert list(supervisor.instances.live) == ["g2"]
