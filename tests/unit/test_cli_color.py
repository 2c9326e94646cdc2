"""``sandvisor run --color``: when the live log is colored (NO_COLOR: https://no-color.org)."""

from __future__ import annotations

import io

import pytest

from sandvisor.cli.run import use_color


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("choice", "terminal", "environ", "colored"),
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # set but empty: as if unset
        ("always", False, {"NO_COLOR": "1"}, True),  # asked for by name
        ("never", True, {}, False),
    ],
)
def test_color_follows_the_flag_the_terminal_and_no_color(
    choice: str, terminal: bool, environ: dict[str, str], colored: bool
) -> None:
    stream = Terminal() if terminal else io.StringIO()
    assert use_color(choice, stream, environ) is colored
