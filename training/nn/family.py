"""A model kind's torch-only part, its family: name, config, model class, and the one predictor.

Each model module ends with its `FAMILY` (`nadaraya_watson.py`, `sequence_model.py`, `seq2seq.py`, `pixel.py`);
`families.py` is their table. The predictor is the forward-to-answer function the handler's adapter, batch scoring
(`make score`) and the MLflow model form all call: a batch of raw inputs in, the model's outputs back. Its
`novelty` is the score the handler counts and the checkpoint's novelty reference holds (`novelty.py`).
The layers above register their own parts beside it, keyed by `Family.name` (`training/data/families.py`,
`training/fit/families.py`, `training/search/space.py`, `training/tracking/families.py`, `handlers/contract.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn


@dataclass(frozen=True)
class Inputs:
    """A batch of raw inputs as a model takes them."""

    x: Tensor  # (B, D) rows, (B, T, D) steps, (B, T) character ids, or (B, C, H, W) images
    lengths: Tensor | None = None  # (B,) valid steps of sequences and texts


@dataclass(frozen=True)
class Outputs:
    """What the predictor answers for a batch."""

    out: Tensor  # (B,) predictions, (B, C) logits or log-probabilities, or (B, T_out) decoded tokens
    weights: Any = None  # the attention weights, when asked for (the model's own form)
    surprise: Tensor | None = None  # seq2seq: (B,) mean negative log-probability of each output's tokens


class Predict(Protocol):
    def __call__(
        self, model: nn.Module, inputs: Inputs, *, need_weights: bool = False, head_weights: bool = False
    ) -> Outputs: ...


@dataclass(frozen=True)
class Family:
    """What is kind-specific and needs torch alone."""

    name: str  # "nw", "mha", "s2s", "pixel": checkpoints, search spaces, served names (`<name>-<dataset>`)
    title: str  # in words, for model cards
    config: type  # the config dataclass: `config(**saved_fields)` rebuilds a checkpoint's
    model: type[nn.Module]  # built as `model(config)`
    # Raw inputs -> outputs (weights when asked; per-head weights only where the kind has heads).
    predict: Predict
    # (B,) novelty scores, from the predictor's outputs when they are at hand, else it runs the predictor.
    novelty: Callable[[nn.Module, Inputs, Outputs | None], Tensor]
    # Whether explanations point at training rows (NW's keys): then what they reveal of them is the archive's
    # setting (`explain_keys`), private by default for a user's file.
    explains_training_rows: bool = False

    def build(self, config: Any) -> nn.Module:
        """The model, from its config dataclass or a dict of its fields."""
        return self.model(self.config(**config) if isinstance(config, dict) else config)
