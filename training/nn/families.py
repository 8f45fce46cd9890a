"""The model kinds' table: each kind's `Family` (`family.py`) by name, and the family of a model."""

from __future__ import annotations

from torch import nn

from . import nadaraya_watson, pixel, seq2seq, sequence_model
from .family import Family

FAMILIES: dict[str, Family] = {
    family.name: family for family in (nadaraya_watson.FAMILY, sequence_model.FAMILY, seq2seq.FAMILY, pixel.FAMILY)
}


def family(name: str) -> Family:
    """The family called `name` ("nw", "mha", "s2s" or "pixel")."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model kind {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model: nn.Module) -> Family:
    """The family a model belongs to."""
    for found in FAMILIES.values():
        if isinstance(model, found.model):
            return found
    raise TypeError(f"not a model of this package: {type(model).__name__}")


def model_kind(model: nn.Module) -> str:
    """The name of a model's family: what its checkpoint records as its "kind"."""
    return family_of(model).name
