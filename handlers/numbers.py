"""Numbers from a JSON body, checked before they reach a model: type, size, finiteness and range.

JSON allows what a float32 model cannot take: integers with hundreds of digits, 1e308, and values so far
from the training data that the model's arithmetic loses all precision. Each is refused here with the
position of the offending value, so every route answers the same 4xx for the same input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, cycle
from typing import Any

import torch
from torch import Tensor

from .errors import RequestError

NUMBER_TYPES = (int, float)  # what JSON numbers decode to; `type(...) in` keeps bools (true/false) out
_NUMBER_TYPE_SET = frozenset(NUMBER_TYPES)
FEW_VALUES = 8  # `Bounds.contains` compares up to this many values one by one: faster than a sum, a min and a max


def is_number(value: Any) -> bool:
    return type(value) in NUMBER_TYPES


def all_numbers(values: Iterable) -> bool:
    """Whether every value is a JSON number: one pass in C, no Python frame per value (the hot path)."""
    return set(map(type, values)) <= _NUMBER_TYPE_SET


def is_table(rows: list, width: int) -> bool:
    """Whether `rows` is a non-empty list of lists of `width` numbers each (sequence steps, image rows):
    one pass in C per property; callers look for what is wrong only when this fails."""
    return set(map(type, rows)) == {list} and set(map(len, rows)) == {width} and all_numbers(chain.from_iterable(rows))


def preview(value: Any, limit: int = 60) -> str:
    """A short rendering of a JSON value for an error message, safe on any input the decoder accepts."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError, OverflowError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Bounds:
    """The accepted input range per feature: the training data's mean ± `max_abs_z` standard deviations.

    Beyond it a standardized input is so large that float32 attention scores overflow or lose every
    significant digit; no meaningful answer exists there, so the value is refused by name.
    """

    low: Tensor  # (D,) float64
    high: Tensor  # (D,) float64
    max_abs_z: float
    names: tuple[str, ...] = ()  # the features' names, when the model has them
    source: str = ""  # where the range comes from, when not the mean ± max_abs_z standard deviations
    statistics: bool = True  # whether a refusal states the range (mean ± k std: the data's statistics) or the rule

    @classmethod
    def from_scaler(cls, scaler, max_abs_z: float, names: list[str] | None = None, statistics: bool = True) -> Bounds:
        mean, std = scaler.mean.detach().double().cpu(), scaler.std.detach().double().cpu()
        return cls(mean - max_abs_z * std, mean + max_abs_z * std, max_abs_z, tuple(names or ()), statistics=statistics)

    @cached_property
    def edges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) per feature, as Python floats."""
        return tuple(zip(self.low.tolist(), self.high.tolist()))

    def contains(self, values: list, width: int) -> bool:
        """Whether `values`, numbers in row-major rows of `width` features, all lie within the range, without a tensor
        (the common case of `check`): a few values compared one by one (a one-row request), more by each feature's
        min and max in C. False for NaN, infinity or an integer too large for a float, which `check` then names."""
        if len(values) <= FEW_VALUES:
            for value, (low, high) in zip(values, cycle(self.edges)):
                if not low <= value <= high:
                    return False
            return True
        try:
            if not math.isfinite(sum(values)):  # NaN and infinity carry through a sum
                return False
        except OverflowError:
            return False
        for feature, (low, high) in enumerate(self.edges):
            column = values[feature::width]
            if column and (min(column) < low or max(column) > high):
                return False
        return True

    def check(self, values: Tensor, where: str) -> None:
        """`values` (..., D) float64; raise naming the first value out of range (NaN/inf included: the
        bounds are finite, and NaN compares false)."""
        inside = (values >= self.low).logical_and_(values <= self.high)
        if inside.all():
            return
        bad = ~inside
        index = [int(i) for i in torch.nonzero(bad)[0]]
        value, feature = float(values[tuple(index)]), index[-1]
        position = where + "".join(f"[{i}]" for i in index[:-1]) if values.dim() > 1 else where
        if not math.isfinite(value):
            raise RequestError("non-finite number", f"{position} contains NaN or infinity")
        name = repr(self.names[feature]) if self.names else str(feature)
        if not self.statistics:
            rule = f"more than {self.max_abs_z:g} standard deviations from the training data's mean"
            raise RequestError("number out of range", f"{position} feature {name} is {value:.6g}, {rule}")
        low, high = float(self.low[feature]), float(self.high[feature])
        source = self.source or f"the training data's mean ± {self.max_abs_z:g} standard deviations"
        raise RequestError(
            "number out of range",
            f"{position} feature {name} is {value:.6g}; this model accepts [{low:.6g}, {high:.6g}] ({source})",
        )


def to_tensor(values: list, where: str) -> Tensor:
    """Validated-type numbers (lists of int/float) as a float64 tensor; integers too large for a float are refused."""
    try:
        return torch.tensor(values, dtype=torch.float64)
    except (RuntimeError, OverflowError):
        for v in _flat(values):
            if type(v) is int and not _fits_float(v):
                digits = int(v.bit_length() * math.log10(2)) + 1
                raise RequestError(
                    "number out of range", f"{where} holds an integer of about {digits} digits, too large for a float"
                ) from None
        raise


def _fits_float(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _flat(values: list):
    for v in values:
        if type(v) is list:
            yield from _flat(v)
        else:
            yield v


def by_name(item: dict, names: list[str], where: str) -> list:
    """An object of numbers by feature name as the model's list of numbers, in the model's feature order."""
    if not names:
        raise RequestError("unnamed features", f"{where}: this model's features have no names; send a list of numbers")
    unknown = [k for k in item if k not in names]
    if unknown:
        detail = f"{where} has unknown feature {preview(unknown[0])}; the model takes {', '.join(names)}"
        raise RequestError("unknown feature", detail)
    missing = [name for name in names if name not in item]
    if missing:
        detail = f"{where} lacks feature {', '.join(map(repr, missing))}; the model takes {', '.join(names)}"
        raise RequestError("missing feature", detail)
    for name in names:
        if not is_number(item[name]):
            raise RequestError("invalid instance", f"{where}[{name!r}] must be a number, got {preview(item[name])}")
    return [item[name] for name in names]
