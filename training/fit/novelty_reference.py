"""The novelty reference a registered model carries: its novelty scores (`training/nn/novelty.py`) on held-out
rows, the same scores the serving handler computes per answered instance (the family's `novelty`), kept as
quantiles."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.data.families import data_family_of
from training.data.splits import Split
from training.nn import family_of, novelty

BATCH = 512


@torch.no_grad()
def novelty_scores(model: nn.Module, split: Split) -> Tensor:
    """(N,) novelty scores of a split's inputs, computed as the handler computes them."""
    model.eval()
    scores = [batch_scores(model, split.subset(slice(i, i + BATCH))) for i in range(0, len(split), BATCH)]
    return torch.cat(scores) if scores else torch.zeros(0)


def batch_scores(model: nn.Module, batch: Split) -> Tensor:
    return family_of(model).novelty(model, data_family_of(model).inputs(batch), None)


def novelty_reference(model: nn.Module, held_out: Split) -> list[float]:
    """The quantiles of the model's novelty scores on held-out rows (the test split's inputs)."""
    return novelty.reference(novelty_scores(model, held_out).cpu())
