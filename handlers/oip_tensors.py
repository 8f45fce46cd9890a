"""A request's Open Inference Protocol tensors: each model kind's declarations (`TensorSpec`, `OutputSpec`,
`OipKind`; the kinds themselves: `handlers/oip_kinds.py`) and an OIP body checked against them (`parse_oip`): the
contract's instances it carries and the outputs it asks for, or a `RequestError` naming the tensor and the problem.
`handlers/oip.py` answers it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import RequestError
from .numbers import NUMBER_TYPES, preview
from .oip_binary import binary_outputs
from .strict_json import dumps

FLOATS = frozenset({"FP32", "FP64"})
INTEGERS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})


@dataclass(frozen=True)
class TensorSpec:
    """A declared tensor: -1 in `shape` is any size; `accepts` are datatypes taken in place of `datatype`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: frozenset[str] = frozenset()
    required: bool = True

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @cached_property
    def fixed(self) -> tuple[tuple[int, int], ...]:
        """(axis, size) of each axis of a declared size."""
        return tuple((axis, size) for axis, size in enumerate(self.shape) if size != -1)

    @cached_property
    def head(self) -> str:
        """An answer's tensor up to its shape's values: {"name":…,"datatype":…,"shape":"""
        return dumps({"name": self.name, "datatype": self.datatype, "shape": 0})[:-2]

    def fits(self, shape: list[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for axis, size in self.fixed:
            if shape[axis] != size:
                return False
        return True


@dataclass(frozen=True)
class OutputSpec:
    tensor: TensorSpec
    take: Callable[[Any, dict], Any]  # (an instance's prediction, its explanation or {}) -> this tensor's row
    explained: bool = False  # attention: computed through explanations, and sent only when named


@dataclass(frozen=True)
class OipKind:
    """One model kind's tensors; `instances` maps the parsed input tensors to the contract's instances."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]
    instances: Callable[[dict[str, InputTensor]], list]

    @cached_property
    def specs(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.inputs}

    @cached_property
    def predictions(self) -> tuple[OutputSpec, ...]:
        """What a request that names no output gets: every output but attention."""
        return tuple(o for o in self.outputs if not o.explained)


@dataclass(slots=True)  # not frozen: built per request, and a frozen dataclass costs 4x as much to build
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list  # flat, row-major

    def rows(self) -> list:
        """The data nested by the shape after the batch dimension."""
        if len(self.shape) == 2 and self.shape[0] == 1:  # one row: the usual request
            return [self.data]
        nested = self.data
        for size in reversed(self.shape[1:]):
            nested = [nested[i : i + size] for i in range(0, len(nested), size)] if size else []
        return nested


@dataclass(slots=True)  # as InputTensor
class OipRequest:
    instances: list  # the contract's instances
    explain: bool
    outputs: tuple[OutputSpec, ...]
    id: str | None
    main_input: str
    binary: frozenset[str] = frozenset()  # outputs sent as raw bytes (handlers/oip_binary.py)


def invalid(detail: str, status: int = 400) -> RequestError:
    return RequestError("invalid inference request", detail, status=status)


def parse_oip(body: dict, kind: OipKind) -> OipRequest:
    """The OIP body as the contract's instances, with the outputs asked for; a `RequestError` names the tensor."""
    request_id = body.get("id")
    if request_id is not None and type(request_id) is not str:
        raise invalid('"id" must be a string')
    if not isinstance(body.get("parameters", {}), dict):
        raise invalid('"parameters" must be an object')
    tensors = parse_inputs(body.get("inputs"), kind)
    outputs = requested_outputs(body.get("outputs"), kind)
    binary = binary_outputs(body, [o.tensor.name for o in outputs])
    explain = any(o.explained for o in outputs)
    return OipRequest(kind.instances(tensors), explain, outputs, request_id, kind.inputs[0].name, binary)


def parse_inputs(inputs: Any, kind: OipKind) -> dict[str, InputTensor]:
    if type(inputs) is not list or not inputs:
        raise invalid('"inputs" must be a non-empty list of tensors {"name", "datatype", "shape", "data"}')
    specs = kind.specs
    tensors: dict[str, InputTensor] = {}
    for i, tensor in enumerate(inputs):
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if type(name) is not str:
            raise invalid(f'inputs[{i}] must be an object with a string "name"')
        if name not in specs:
            raise invalid(f"unknown input '{name}'; this model takes {', '.join(map(repr, specs))}")
        if name in tensors:
            raise invalid(f"input '{name}' is given twice")
        tensors[name] = parse_tensor(tensor, specs[name])
    if len(tensors) < len(specs):
        missing = [name for name, spec in specs.items() if spec.required and name not in tensors]
        if missing:
            raise invalid(f"input '{missing[0]}' is missing")
    return tensors


def parse_tensor(tensor: dict, spec: TensorSpec) -> InputTensor:
    """One input checked against its declaration: datatype, shape, data length and element types."""
    name, datatype, shape = spec.name, tensor.get("datatype"), tensor.get("shape")
    if datatype != spec.datatype and (type(datatype) is not str or datatype not in spec.accepts):
        taken = " or ".join([spec.datatype, *sorted(spec.accepts)])
        raise invalid(f"input '{name}' has datatype {preview(datatype)}; this model takes {taken}")
    if type(shape) is not list or not set(map(type, shape)) <= SIZES or min(shape, default=0) < 0:
        raise invalid(f"input '{name}' needs a shape: a list of sizes, each a non-negative integer")
    if not spec.fits(shape):
        raise invalid(f"input '{name}' has shape {shape}; this model takes {list(spec.shape)} (-1: any size)")
    data = tensor.get("data")
    if type(data) is not list:
        raise invalid(f"input '{name}' needs its data as a list")
    elements = set(map(type, data))
    if list in elements and len(shape) > 1:
        data = flattened(data, len(shape), name)
        elements = set(map(type, data))
    if len(data) != math.prod(shape):
        raise invalid(f"input '{name}' has shape {shape}, {math.prod(shape)} values, but {len(data)} values of data")
    taken, called = ELEMENT_TYPES.get(datatype, NUMBERS)
    if not elements <= taken:
        wrong = next(i for i, v in enumerate(data) if type(v) not in taken)
        raise invalid(f"input '{name}' data[{wrong}] is {json.dumps(data[wrong])[:40]}; {datatype} takes {called}")
    return InputTensor(name, datatype, tuple(shape), data)


SIZES = frozenset({int})


def flattened(data: list, depth: int, name: str) -> list:
    """Data nested up to the shape's rank, in row-major order."""
    for _ in range(depth - 1):
        types = set(map(type, data))
        if list not in types:
            break
        if len(types) > 1:
            raise invalid(f"input '{name}' has data nested unevenly: flatten it in row-major order")
        data = [value for item in data for value in item]
    return data


ELEMENT_TYPES = {"BYTES": (frozenset({str}), "strings"), **{t: (frozenset({int}), "integers") for t in INTEGERS}}
NUMBERS = (frozenset(NUMBER_TYPES), "numbers")


def requested_outputs(outputs: Any, kind: OipKind) -> tuple[OutputSpec, ...]:
    """The outputs named, or every output but attention when none are."""
    if outputs is None:
        return kind.predictions
    known = {o.tensor.name: o for o in kind.outputs}
    if type(outputs) is not list or not outputs:
        raise invalid('"outputs" must be a non-empty list of {"name": ...}, or left out for every prediction output')
    chosen: list[OutputSpec] = []
    for i, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if type(name) is not str or name not in known:
            shown = json.dumps(name)[:40] if type(name) is str else f"outputs[{i}]"
            raise invalid(f"unknown output {shown}; this model answers {', '.join(map(repr, known))}")
        if known[name] not in chosen:
            chosen.append(known[name])
    return tuple(chosen)
