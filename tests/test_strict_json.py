"""`handlers/strict_json.py` gives what the standard library gives, errors included."""

import json
import math

import pytest

from handlers import strict_json
from handlers.strict_json import STRICT, dumps, loads

VALUES = [
    [2.0338532165237435, -0.0, 1e-300, 1e308, 3, -(2**70), True, None],
    {"id": "", "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [1], "data": [0.1, 0.2]}]},
    {"text": 'quote " backslash \\ newline \n tab \t unicode é 中 emoji 🙂 control \x01'},
    {"nested": [[[[]]], {}, [{}], {"a": {"b": {"c": [1, [2, [3]]]}}}]},
    [],
    {},
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_the_strict_encoder_writes(value):
    assert dumps(value) == STRICT.encode(value)
    assert json.loads(dumps(value)) == value


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_what_json_cannot_carry(number):
    for value in ([number], {"data": [1.0, number]}):
        with pytest.raises(ValueError):
            dumps(value)


def test_dumps_without_the_c_encoder_falls_back_to_the_standard_one(monkeypatch):
    monkeypatch.setattr(strict_json, "_ENCODE", None)
    assert dumps(VALUES[1]) == STRICT.encode(VALUES[1])
    with pytest.raises(ValueError):
        dumps([math.nan])


@pytest.mark.parametrize(
    "text",
    [
        '{"instances": [0.5]}',
        '{"instances": [0.5]}  \n\t\r',
        '  {"leading": "whitespace"}',
        '"a string"',
        "[1, 2.5, -3e-7, true, false, null]",
        '{"a": NaN, "b": Infinity, "c": -Infinity}',  # what json.loads takes; the contract refuses them later
        '{"dup": 1, "dup": 2}',
        '{"esc": "\\u00e9\\n\\ud83d\\ude42"}',
    ],
)
def test_loads_reads_what_json_loads_reads(text):
    expected, got = json.loads(text), loads(text)
    assert json.dumps(got) == json.dumps(expected)


def error_of(read, text):
    try:
        read(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        return type(error), str(error)
    return None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "{",
        '{"instances": [0.5]} trailing',
        '{"instances": [0.5]}{}',
        "[1,]",
        "{'single': 'quotes'}",
        "1" * 5000,  # more digits than Python converts
        "[" * 100_000 + "]" * 100_000,  # nested too deeply
        "\ufeff{}",  # a byte-order mark
    ],
)
def test_loads_fails_as_json_loads_fails(text):
    expected = error_of(json.loads, text)
    assert expected is not None
    assert error_of(loads, text) == expected
