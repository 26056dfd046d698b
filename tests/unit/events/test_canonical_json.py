"""Canonical JSON: the spec appendix examples, the value rules, strict parsing."""

from __future__ import annotations

import json
from typing import Any

import canonicaljson
import pytest
from _events_helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.core.json import (
    CanonicalJSONError,
    check_canonical_json_values,
    encode_canonical_json,
    parse_json_strict,
)

# (input JSON text, expected canonical output) from the appendix "Canonical JSON".
SPEC_EXAMPLES = [
    ("{}", "{}"),
    ('{"one": 1, "two": "Two"}', '{"one":1,"two":"Two"}'),
    ('{"b": "2", "a": "1"}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {
            "display_name": "John Doe", "three_pids": [
            {"medium": "email", "address": "john.doe@example.org"},
            {"medium": "msisdn", "address": "123456789"}]}}}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{"a": "日本語"}', '{"a":"日本語"}'),
    ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
    ('{"a": "\\u65E5"}', '{"a":"日"}'),
    ('{"a": null}', '{"a":null}'),
    ('{"a": -0, "b": 10000000000}', '{"a":0,"b":10000000000}'),
]


@pytest.mark.parametrize(("source", "expected"), SPEC_EXAMPLES)
def test_spec_examples(source: str, expected: str) -> None:
    assert encode_canonical_json(parse_json_strict(source)) == expected.encode("utf-8")


def test_spec_example_with_exponent() -> None:
    # The spec's {"a": -0, "b": 1e10}: 1e10 parses to a float, and floats have no
    # canonical form, so the strict encoder refuses it rather than guess.
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(parse_json_strict('{"a": -0, "b": 1e10}'))
    assert encode_canonical_json({"a": -0, "b": 10**10}) == b'{"a":0,"b":10000000000}'


def test_control_characters_use_short_escapes() -> None:
    assert encode_canonical_json({"a": '\n\t\x00\x1f"\\'}) == b'{"a":"\\n\\t\\u0000\\u001f\\"\\\\"}'


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1.0,
        float("nan"),
        float("inf"),
        2**53,
        -(2**53),
        {"a": [1, {"b": 0.5}]},
        {1: "a"},
        {"a": object()},
        {"a": "\ud800"},
    ],
)
def test_rejects_non_canonical_values(value: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        check_canonical_json_values(value)
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(value)


def test_integer_bounds_are_inclusive() -> None:
    assert encode_canonical_json([2**53 - 1, -(2**53) + 1]) == b"[9007199254740991,-9007199254740991]"


def test_lenient_mode_encodes_old_room_values() -> None:
    assert encode_canonical_json({"a": 2**60, "b": 1.5}, strict=False) == b'{"a":1152921504606846976,"b":1.5}'


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "{", b"\xff"])
def test_parse_rejects_invalid(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        parse_json_strict(text)


def test_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_json_strict("[" * 100000 + "]" * 100000)
    deep: list[Any] = []
    for _ in range(100000):
        deep = [deep]
    with pytest.raises(CanonicalJSONError):
        encode_canonical_json(deep, strict=False)


def test_parse_accepts_utf8_bytes() -> None:
    assert parse_json_strict('{"a":"日"}'.encode()) == {"a": "日"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=examples(200), deadline=None)
@given(json_values)
def test_agrees_with_python_canonicaljson_and_round_trips(value: Any) -> None:
    encoded = encode_canonical_json(value)
    assert encoded == canonicaljson.encode_canonical_json(value)
    assert parse_json_strict(encoded) == value
    # Shortest form: no whitespace outside strings, so re-encoding is a fixed point.
    assert encode_canonical_json(json.loads(encoded)) == encoded
