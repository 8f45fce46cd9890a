"""The translation task in the fit loop: a teacher-forced cross-entropy, evaluated by greedy exact match.

Separate from `fit.py` so the loop stays one screen; `fit` dispatches here for task "translation".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.data.datasets import Split
from training.nn.seq2seq import PAD, Seq2Seq


def teacher_forced(model: Seq2Seq, split: Split) -> Tensor:
    """Logits (B, T_out, V) for the split's targets; padding past the longest input is trimmed."""
    T = int(split.lengths.max())
    return model(split.x[:, :T], split.lengths, split.y)[0]


def loss(out: Tensor, y: Tensor, reduction: str) -> Tensor:
    """Cross-entropy over target tokens (end-of-sequence included), padding ignored."""
    return F.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=PAD, reduction=reduction)


@torch.no_grad()
def evaluate(model: Seq2Seq, split: Split, batch_size: int = 1024) -> dict[str, float]:
    """exact_match: greedy output equals the target (end included); token_accuracy: per target token;
    loss: the teacher-forced cross-entropy per token."""
    model.eval()
    exact = correct = total = 0
    nll = 0.0
    for start in range(0, len(split), batch_size):
        batch = split.subset(slice(start, start + batch_size))
        T = int(batch.lengths.max())
        x, y = batch.x[:, :T], batch.y  # (B, T), (B, T_out)
        nll += loss(model(x, batch.lengths, y)[0].float(), y, "sum").item()
        tokens, _, _ = model.generate(x, batch.lengths, max_len=y.shape[1])  # (B, <= T_out)
        tokens = F.pad(tokens, (0, y.shape[1] - tokens.shape[1]), value=PAD)  # (B, T_out)
        valid = y != PAD  # (B, T_out)
        hits = (tokens == y) & valid
        exact += int((hits | ~valid).all(-1).sum())
        correct += int(hits.sum())
        total += int(valid.sum())
    return {"exact_match": exact / len(split), "token_accuracy": correct / total, "loss": nll / total}
