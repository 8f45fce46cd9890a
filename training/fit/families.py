"""The fit loop's part of each model kind, beside its `Family` (`training/nn`) and `DataFamily` (`training/data`):
the outputs a batch is trained and evaluated on, where they are not the predictor's answer to the batch's inputs
(NW leaves each training row out of its own answer; seq2seq is trained on teacher-forced logits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from training.data import families as data_families
from training.data.splits import Split
from training.fit import translation
from training.nn import family_of, nadaraya_watson, pixel, seq2seq, sequence_model
from training.nn.family import Family

# (model, split, exclude) -> raw predictions (N,), logits (N, C) or (N, T_out, V); `exclude`: NW's leave-one-out index
Outputs = Callable[[nn.Module, Split, Tensor | None], Tensor]


@dataclass(frozen=True)
class FitFamily:
    family: Family
    outputs: Outputs

    @property
    def name(self) -> str:
        return self.family.name


def predicted(family: Family) -> Outputs:
    """The predictor's outputs for the split's inputs."""
    inputs = data_families.family(family.name).inputs
    return lambda model, split, exclude=None: family.predict(model, inputs(split)).out


def left_out(model: nn.Module, split: Split, exclude: Tensor | None = None) -> Tensor:
    """NW in training: each row's own key left out of its answer (`exclude`: the rows' indices among the keys)."""
    return model(split.x, exclude=exclude)[0]


FAMILIES: dict[str, FitFamily] = {
    family.name: family
    for family in (
        FitFamily(nadaraya_watson.FAMILY, left_out),
        FitFamily(sequence_model.FAMILY, predicted(sequence_model.FAMILY)),
        FitFamily(seq2seq.FAMILY, lambda model, split, exclude=None: translation.teacher_forced(model, split)),
        FitFamily(pixel.FAMILY, predicted(pixel.FAMILY)),
    )
}


def fit_family_of(model: nn.Module) -> FitFamily:
    return FAMILIES[family_of(model).name]
