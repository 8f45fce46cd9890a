"""The novelty reference a registered model carries: its novelty scores (`training/nn/novelty.py`) on held-out
rows, the same scores the serving handler computes per answered instance, kept as quantiles."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.data.datasets import Split, as_images
from training.nn import NadarayaWatson, PixelModel, Seq2Seq, SequenceModel, novelty

BATCH = 512


@torch.no_grad()
def novelty_scores(model: nn.Module, split: Split) -> Tensor:
    """(N,) novelty scores of a split's inputs, computed as the handler computes them."""
    model.eval()
    scores = [batch_scores(model, split.subset(slice(i, i + BATCH))) for i in range(0, len(split), BATCH)]
    return torch.cat(scores) if scores else torch.zeros(0)


def batch_scores(model: nn.Module, batch: Split) -> Tensor:
    if isinstance(model, NadarayaWatson):
        if model.config.n_classes:
            return novelty.normalized_entropy(model(batch.x)[0].exp())
        return model.nearest_key_distance(batch.x)
    if isinstance(model, Seq2Seq):
        T = int(batch.lengths.max())
        return model.generate(batch.x[:, :T], batch.lengths)[2]
    if isinstance(model, PixelModel):
        return novelty.normalized_entropy(torch.softmax(model(as_images(batch))[0].double(), -1))
    if isinstance(model, SequenceModel):
        T = int(batch.lengths.max())
        out, weights = model(batch.x[:, :T], batch.lengths, need_weights=True, head_weights=False)
        if model.config.task == "regression":
            return novelty.pooling_entropy(weights["pooling"], batch.lengths)
        return novelty.normalized_entropy(torch.softmax(out.double(), -1))
    raise TypeError(f"no novelty score for {type(model).__name__}")


def novelty_reference(model: nn.Module, held_out: Split) -> list[float]:
    """The quantiles of the model's novelty scores on held-out rows (the test split's inputs)."""
    return novelty.reference(novelty_scores(model, held_out).cpu())
