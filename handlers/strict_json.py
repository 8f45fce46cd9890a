"""JSON in and out at the cost of one small request: the standard library's C scanner and encoder, called
directly.

`json.dumps` and `JSONEncoder.encode` build a new C encoder on every call, and `json.loads` wraps its C scanner in
checks and a regular expression: ~1 µs a call either way, as much as the work itself on a one-row request or
answer, and paid several times per request. `dumps` and `loads` here keep one of each and fall back to the
standard functions wherever those would answer differently (an error's message, leading whitespace, a Python
without the C accelerator), so both give what `json` gives, byte for byte (`tests/test_strict_json.py`).
"""

from __future__ import annotations

import json
from json import encoder
from typing import Any

STRICT = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # no NaN or Infinity, no spaces
_DECODER = json.JSONDecoder()
_SCAN = _DECODER.scan_once
# markers None: no check for cycles (a JSON answer is a tree); the rest as STRICT's own one-shot encoder.
_ENCODE = (
    encoder.c_make_encoder(None, STRICT.default, encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    if encoder.c_make_encoder is not None
    else None
)
WHITESPACE = " \t\n\r"  # JSON's own


def dumps(value: Any) -> str:
    """`STRICT.encode(value)` for a list or a dict: a ValueError on NaN or infinity."""
    if _ENCODE is None:
        return STRICT.encode(value)
    return "".join(_ENCODE(value, 0))


def dumps_text(text: str) -> str:
    """A string as strict JSON (ASCII, escaped): `STRICT.encode(text)`."""
    return encoder.encode_basestring_ascii(text)


def loads(text: str) -> Any:
    """`json.loads(text)`, its errors included."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:  # not JSON where it starts (or whitespace first): json.loads says which
        return json.loads(text)
    if end != len(text) and text[end:].strip(WHITESPACE):
        return json.loads(text)  # something after the value: its error
    return value
