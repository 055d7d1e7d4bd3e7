"""Version numbers, policies and the default version (wsserve.repository.versions)."""

from __future__ import annotations

import pytest

from wsserve.repository import (
    VersionPolicy,
    default_version,
    parse_version,
    select_versions,
)


@pytest.mark.parametrize("value, expected", [
    ("1", 1), ("10", 10), ("999999999999999", 999999999999999), (7, 7),
    ("0", None), ("01", None), ("+1", None), ("-1", None), (" 1", None), ("1 ", None), ("1.0", None),
    ("", None), ("1e3", None), ("١", None), ("²", None), ("1000000000000000", None),
    (0, None), (-3, None), (True, None), (1.0, None), (None, None), ("v1", None), (".1.tmp", None),
])
def test_parse_version(value: object, expected: int | None) -> None:
    assert parse_version(value) == expected  # type: ignore[arg-type]


def test_versions_compare_as_numbers() -> None:
    names = ["2", "10", "9", "1"]
    assert sorted(parse_version(n) for n in names) == [1, 2, 9, 10]
    assert select_versions([parse_version(n) for n in names], VersionPolicy("latest", count=1)) == (10,)


@pytest.mark.parametrize("policy, expected", [
    (VersionPolicy("all"), (1, 2, 10)),
    (VersionPolicy("latest", count=1), (10,)),
    (VersionPolicy("latest", count=2), (2, 10)),
    (VersionPolicy("latest", count=5), (1, 2, 10)),
    (VersionPolicy("specific", versions=(1, 10, 11)), (1, 10)),
    (VersionPolicy("specific", versions=(3,)), ()),
])
def test_select_versions(policy: VersionPolicy, expected: tuple[int, ...]) -> None:
    assert select_versions([10, 2, 1, 2], policy) == expected


def test_default_version_is_the_highest_ready_one() -> None:
    assert default_version({1: "ready", 2: "ready", 10: "loading"}) == 2
    assert default_version({1: "ready", 2: "failed", 10: "ready"}) == 10
    assert default_version({1: "unloading", 3: "failed"}) is None
    assert default_version({}) is None
