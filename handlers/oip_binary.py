"""The Open Inference Protocol's binary tensor extension (Triton's; what `tritonclient` sends by default), as plain
functions over bytes.

Request:  header `Inference-Header-Content-Length: N`; the body is N bytes of JSON, then each input's raw bytes in
          the order of `inputs`, as many as its `parameters.binary_data_size` says (inputs without it carry `data`).
Response: outputs asked for with `parameters.binary_data: true` (or every output by `binary_data_output: true` in
          the request's `parameters`) carry `parameters.binary_data_size` instead of `data`, and their bytes follow
          the JSON in output order; the answer's `Inference-Header-Content-Length` is the JSON's length.
Bytes:    numbers little-endian, row-major; a BYTES element is a 4-byte little-endian length and that many bytes
          (UTF-8 text here).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .contract import check_body_size, decode_body
from .errors import RequestError
from .types import Limits

HEADER = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"
# Each datatype's element as a `struct` format (BYTES elements are length-prefixed, read apart).
FORMATS = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
SIZES = {datatype: struct.calcsize(element) for datatype, element in FORMATS.items()}
LENGTH = struct.Struct("<I")


def invalid(detail: str) -> RequestError:
    return RequestError("invalid inference request", detail)


# request


def binary_body(raw: bytes, length: str, limits: Limits) -> dict:
    """The JSON header with each binary input's bytes read into its `data`; a `RequestError` says what does not
    add up."""
    check_body_size(raw, limits)
    if not (length.isascii() and length.isdigit() and len(length) <= 12):
        raise invalid(f"the {HEADER} header is {length[:20]!r}; expected the JSON header's length in bytes")
    size = int(length)
    if size > len(raw):
        raise invalid(f"the {HEADER} header says {size} bytes of JSON; the body has {len(raw)} bytes")
    body = decode_body(raw[:size], limits)
    offset = size
    inputs = body.get("inputs")
    for i, tensor in enumerate(inputs if type(inputs) is list else []):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        name, count = tensor.get("name", f"inputs[{i}]"), parameters["binary_data_size"]
        if type(count) is not int or count < 0:
            raise invalid(f"input '{name}' has binary_data_size {json.dumps(count)[:20]}; expected a byte count")
        if "data" in tensor:
            raise invalid(f"input '{name}' has both data and binary_data_size: send one")
        if offset + count > len(raw):
            left = len(raw) - offset
            raise invalid(f"input '{name}' has binary_data_size {count}; only {left} bytes of the body are left")
        tensor["data"] = unpacked(raw[offset : offset + count], tensor.get("datatype"), name)
        offset += count
    if offset != len(raw):
        raise invalid(f"{len(raw) - offset} bytes follow the last binary input; binary_data_size accounts for none")
    return body


def unpacked(blob: bytes, datatype: Any, name: str) -> list:
    """One input's bytes as a flat list of its elements."""
    if datatype == "BYTES":
        return strings(blob, name)
    if type(datatype) is not str or datatype not in FORMATS:
        raise invalid(f"input '{name}' has datatype {json.dumps(datatype)[:20]}; no binary form is known for it")
    element = SIZES[datatype]
    if len(blob) % element:
        raise invalid(f"input '{name}' has {len(blob)} bytes, not a whole number of {element}-byte {datatype} values")
    return list(struct.unpack(f"<{len(blob) // element}{FORMATS[datatype]}", blob))


def strings(blob: bytes, name: str) -> list[str]:
    """Length-prefixed UTF-8 strings."""
    items, offset = [], 0
    while offset < len(blob):
        if offset + LENGTH.size > len(blob):
            raise invalid(f"input '{name}' element {len(items)} has a cut-off 4-byte length")
        (size,) = LENGTH.unpack_from(blob, offset)
        offset += LENGTH.size
        if offset + size > len(blob):
            raise invalid(f"input '{name}' element {len(items)} says {size} bytes; {len(blob) - offset} are left")
        try:
            items.append(bytes(blob[offset : offset + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise invalid(f"input '{name}' element {len(items)} is not UTF-8 text") from None
        offset += size
    return items


NONE: frozenset[str] = frozenset()


def binary_outputs(body: dict, names: list[str]) -> frozenset[str]:
    """Which of the outputs to send in binary: each output's own `binary_data`, else the request's
    `binary_data_output`, else none."""
    default = body.get("parameters", {}).get("binary_data_output", False)
    if type(default) is not bool:
        raise invalid('"parameters" binary_data_output must be true or false')
    if "outputs" not in body:  # the usual request: the request's choice for every output
        return frozenset(names) if default else NONE
    asked: dict[str, bool] = {}
    for output in body.get("outputs") or []:
        parameters = output.get("parameters", {}) if isinstance(output, dict) else {}
        choice = parameters.get("binary_data", default) if isinstance(parameters, dict) else default
        if type(choice) is not bool:
            raise invalid(f"output {json.dumps(output.get('name'))[:40]} binary_data must be true or false")
        asked[output.get("name")] = choice
    return frozenset(name for name in names if asked.get(name, default))


# response


def packed(data: list, datatype: str) -> bytes:
    if datatype == "BYTES":
        encoded = [str(item).encode("utf-8") for item in data]
        return b"".join(LENGTH.pack(len(item)) + item for item in encoded)
    return struct.pack(f"<{len(data)}{FORMATS[datatype]}", *data)


def binary_answer(header: str, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The answer's body (its JSON `header`, then the blobs) and its HTTP headers (besides its content type,
    `CONTENT_TYPE`)."""
    text = header.encode()
    return b"".join([text, *blobs]), {HEADER: str(len(text))}
