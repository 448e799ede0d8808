"""Canonical JSON: the exact leaf bytes of release-log entries."""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from enum import Enum
from typing import Any

import pytest

from xdp_compute.audit.canonical import CanonicalJsonError, canonical_json
from xdp_compute.errors import BadRequest


def test_sorted_keys_no_whitespace() -> None:
    obj = {"b": 1, "a": [1, 2, {"d": None, "c": True}], "é": False, "A": "x"}
    assert canonical_json(obj) == '{"A":"x","a":[1,2,{"c":true,"d":null}],"b":1,"é":false}'.encode()


def test_insertion_order_does_not_matter() -> None:
    items = [("job", "j-1"), ("epsilon", 0.5), ("datasets", ["a", "b"]), ("index", 3)]
    rng = random.Random(7)
    expected = canonical_json(dict(items))
    for _ in range(20):
        rng.shuffle(items)
        assert canonical_json(dict(items)) == expected
        assert canonical_json(OrderedDict(items)) == expected


def test_utf8_and_escapes() -> None:
    out = canonical_json({"k": 'é✓\n"\\\u0001'})
    assert out == b'{"k":"\xc3\xa9\xe2\x9c\x93\\n\\"\\\\\\u0001"}'
    assert json.loads(out) == {"k": 'é✓\n"\\\u0001'}


def test_numbers() -> None:
    assert canonical_json(1) == b"1"
    assert canonical_json(1.0) == b"1.0"  # an int and a float stay distinct leaves
    assert canonical_json(0.1) == b"0.1"
    assert canonical_json(-0.0) == b"-0.0"
    assert canonical_json(1e16) == b"1e+16"
    assert canonical_json(2**70) == str(2**70).encode()
    assert canonical_json(True) == b"true"


def test_float_round_trip_is_exact() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        x = rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-30, 30)
        out = canonical_json({"x": x})
        back = json.loads(out)["x"]
        assert back == x and math.copysign(1.0, back) == math.copysign(1.0, x)
        assert canonical_json(json.loads(out)) == out


def test_stable_after_json_round_trip() -> None:
    entry = {
        "index": 4,
        "principal": "analyst:ana",
        "cost": {"epsilon": 0.25, "delta": 1e-9},
        "decisions": [{"rule": "min_group", "ok": True}],
        "note": "Zürich",
    }
    data = canonical_json(entry)
    assert canonical_json(json.loads(data)) == data
    assert canonical_json(json.loads(json.dumps(entry, indent=2))) == data


class Colour(str, Enum):
    RED = "red"


def test_str_subclass_encodes_its_value() -> None:
    assert canonical_json({"c": Colour.RED}) == b'{"c":"red"}'
    assert canonical_json((1, "a")) == b'[1,"a"]'


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ({"cost": {"epsilon": float("-inf")}}, "$.cost.epsilon"),
        ([1, {2}], "$[1]: set"),
        ({"k": b"bytes"}, "bytes"),
        ({"k": object()}, "object"),
        ({1: "x"}, "not a string"),
        ({("a",): "x"}, "not a string"),
        ({"k": "\ud800"}, "Unicode"),
    ],
)
def test_rejects_non_json(value: Any, fragment: str) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_json(value)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, BadRequest)


def test_rejects_cycles_and_deep_nesting() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CanonicalJsonError, match="circular"):
        canonical_json(loop)
    deep: Any = 0
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CanonicalJsonError, match="deeper"):
        canonical_json(deep)
    shared = [1]
    assert canonical_json([shared, shared]) == b"[[1],[1]]"  # shared, not circular
