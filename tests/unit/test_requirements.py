"""Dependency strings: validation, normalization, merging, env keys, base satisfaction."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from sandvisor.supervisor.envs.base import BaseEnvironment
from sandvisor.supervisor.envs.keys import env_key
from sandvisor.supervisor.envs.requirements import parse_dependencies
from sandvisor.supervisor.errors import RequirementRejected


def specs(texts: list[str], **kwargs: bool) -> list[str]:
    return [r.spec for r in parse_dependencies(texts, **kwargs)]


@pytest.fixture(scope="module")
def base() -> BaseEnvironment:
    return BaseEnvironment.current()


def test_names_are_canonical_and_sorted() -> None:
    assert specs(["Zope.Interface>=5", "requests[SOCKS,Security]==2.*", "six"]) == [
        "requests[security,socks]==2.*",
        "six",
        "zope-interface>=5",
    ]


def test_same_set_in_another_order_is_equal() -> None:
    one = parse_dependencies(["b<2,>=1", "a==1.0", "c"])
    two = parse_dependencies(["c", "A == 1.0", "b >=1, <2"])
    assert one == two


def test_duplicates_merge_specifiers_and_extras() -> None:
    assert specs(["pkg>=1", "pkg[x]<3", "Pkg[y]"]) == ["pkg[x,y]<3,>=1"]


def test_false_markers_drop_the_requirement() -> None:
    assert specs(['six; python_version < "3"', 'tiny; python_version >= "3"']) == ["tiny"]


def test_a_name_that_looks_like_a_file_is_rendered_as_a_name() -> None:
    # uv would read "foo.whl" as a path; the canonical name "foo-whl" is only a name.
    assert specs(["foo.whl"]) == ["foo-whl"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("--index-url=http://evil.example/simple", "options are not accepted"),
        ("-e .", "options are not accepted"),
        ("  -rrequirements.txt", "options are not accepted"),
        ("six\n--extra-index-url http://evil", "line break"),
        ("./local/pkg", "not a PEP 508 requirement"),
        ("/tmp/pkg.whl", "not a PEP 508 requirement"),
        ("git+https://github.com/x/y", "not a PEP 508 requirement"),
        ("pkg @ https://example.com/pkg.whl", "direct URLs"),
        ("pkg @ file:///tmp/pkg.whl", "direct URLs"),
        ("", "empty"),
        ("x" * 2000, "longer than"),
    ],
)
def test_rejected_strings_name_the_string_and_why(text: str, why: str) -> None:
    with pytest.raises(RequirementRejected) as caught:
        parse_dependencies(["six", text])
    message = str(caught.value)
    assert why in message
    assert repr(text[:20])[1:-1] in message
    assert "\n" not in message


def test_non_strings_are_rejected() -> None:
    with pytest.raises(RequirementRejected, match="must be a string"):
        parse_dependencies(["six", 3])  # type: ignore[list-item]


def test_direct_urls_pass_when_allowed() -> None:
    assert specs(["Pkg @ file:///tmp/pkg.whl"], allow_direct_urls=True) == [
        "pkg @ file:///tmp/pkg.whl"
    ]


def test_conflicting_urls_are_rejected() -> None:
    with pytest.raises(RequirementRejected, match="conflicts"):
        parse_dependencies(["p @ file:///a.whl", "p @ file:///b.whl"], allow_direct_urls=True)


def test_key_is_order_independent_and_specific(base: BaseEnvironment) -> None:
    key = env_key(parse_dependencies(["a", "b==1"]), base)
    assert key == env_key(parse_dependencies(["B == 1", "A"]), base)
    assert key != env_key(parse_dependencies(["a", "b==2"]), base)
    assert len(key) == 24 and key.isalnum()


def test_key_changes_with_the_base(base: BaseEnvironment) -> None:
    other = BaseEnvironment(
        python=base.python,
        site_dirs=base.site_dirs,
        versions=base.versions,
        requires=base.requires,
        tag=base.tag,
        fingerprint="0" * 16,
    )
    reqs = parse_dependencies(["a"])
    assert env_key(reqs, base) != env_key(reqs, other)


def test_key_changes_with_the_runtimes_ranges(base: BaseEnvironment) -> None:
    reqs = parse_dependencies(["a"])
    key = env_key(reqs, base, ["msgpack>=1.0.8", "cloudpickle>=3.1.1"])
    assert key == env_key(reqs, base, ["cloudpickle>=3.1.1", "msgpack>=1.0.8"])
    assert key != env_key(reqs, base, ["msgpack>=2", "cloudpickle>=3.1.1"])


def test_base_satisfies_what_it_has(base: BaseEnvironment) -> None:
    six = str(base.versions["six"])
    assert base.satisfies(Requirement("six"))
    assert base.satisfies(Requirement(f"six=={six}"))
    assert base.satisfies(Requirement("msgpack>=1"))
    assert not base.satisfies(Requirement("six<1.0"))
    assert not base.satisfies(Requirement("this-package-does-not-exist"))
    assert not base.satisfies(Requirement("six @ file:///tmp/six.whl"))


def test_base_checks_the_dependencies_of_extras(base: BaseEnvironment) -> None:
    # requests[socks] needs PySocks, which the base does not have.
    assert "pysocks" not in base.versions
    assert base.satisfies(Requirement("requests"))
    assert not base.satisfies(Requirement("requests[socks]"))


def test_base_site_dirs_include_the_running_environment(base: BaseEnvironment) -> None:
    import msgpack

    assert any(str(msgpack.__file__).startswith(str(d)) for d in base.site_dirs)
