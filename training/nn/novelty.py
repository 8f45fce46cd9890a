"""How unfamiliar an input is to the model, read off the model's own attention or output, and the reference that
turns a score into the quantile of the scores the model gave to data it was tuned for.

Each score is higher for a less familiar input:
- Nadaraya-Watson: the distance to the nearest key in bandwidths (the kernel's own units: a query k bandwidths
  from every key gets at most exp(-k^2/2) of kernel mass before normalization, and its prediction is an
  average of whatever is least far);
- classifiers (NW, sequence, pixel): the entropy of the answer's probabilities, over log(classes) (0: sure, 1: flat);
- the sequence regressor: the entropy of its pooling weights over log(steps) (1: the steps all look alike to it);
- seq2seq: the mean surprise (negative log-probability) of the decoded characters, end of sequence included.

`reference` keeps `REFERENCE_POINTS` quantiles of the scores of held-out rows (the test split's inputs: never
trained on, and never selected on); `quantile_of` maps a served score back onto them. Without drift the
quantiles of served inputs are uniform on [0, 1], so "the share above 0.9" reads 10 % and a shift shows in any
fixed bucket. A score beyond every held-out score is `BEYOND`: counted apart, as the model has seen nothing like it.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

REFERENCE_POINTS = 101  # quantiles 0, 0.01, ..., 1
BEYOND = "beyond"
BANDS = (0.5, 0.75, 0.9, 0.99)  # lower edges of the reported bands above the first, [0, 0.5)


def normalized_entropy(probabilities: Tensor) -> Tensor:
    """(N, C) probabilities -> (N,) entropy over log C, in [0, 1]."""
    p = probabilities.double().clamp_min(1e-300)
    classes = probabilities.shape[-1]
    return -(p * p.log()).sum(-1) / math.log(classes) if classes > 1 else torch.zeros(len(p), dtype=p.dtype)


def pooling_entropy(weights: Tensor, lengths: Tensor | None) -> Tensor:
    """(N, T) pooling weights over the valid steps -> (N,) entropy over log(steps); one step scores 0."""
    p = weights.double().clamp_min(1e-300)
    entropy = -(p * p.log()).sum(-1)
    steps = torch.full_like(entropy, weights.shape[-1]) if lengths is None else lengths.to(entropy)
    return torch.where(steps > 1, entropy / steps.clamp_min(2).log(), torch.zeros_like(entropy))


def reference(scores: Tensor) -> list[float]:
    """The scores' quantiles at 0, 1/(n-1), ..., 1: what `quantile_of` compares served scores with."""
    scores = scores.double().flatten()
    scores = scores[torch.isfinite(scores)]
    if not len(scores):
        return []
    points = torch.linspace(0, 1, REFERENCE_POINTS, dtype=torch.float64)
    return [float(f"{q:.6g}") for q in torch.quantile(scores, points).tolist()]


def quantile_of(score: float, reference_points: list[float]) -> float:
    """Where `score` falls among the reference quantiles, interpolated: 0 at or below the least, 1 at the most."""
    if not reference_points or not math.isfinite(score):
        return 1.0
    n = len(reference_points) - 1
    if n == 0 or score <= reference_points[0]:
        return 0.0
    if score >= reference_points[-1]:
        return 1.0
    right = bisect.bisect_right(reference_points, score)  # reference_points[right - 1] <= score < [right]
    low, high = reference_points[right - 1], reference_points[right]
    within = (score - low) / (high - low) if high > low else 0.0
    return (right - 1 + within) / n


def band_names() -> list[str]:
    """The reported bands of a score's quantile: "0-0.5", "0.5-0.75", ..., "0.99-1", and `BEYOND`."""
    edges = (0.0, *BANDS, 1.0)
    return [f"{low:g}-{high:g}" for low, high in zip(edges, edges[1:])] + [BEYOND]


BAND_NAMES = band_names()


def count_bands(scores: list[float], reference_points: list[float]) -> dict[str, int]:
    """How many scores fall in each band: the bands' edges in score units, then one bisection per score."""
    if len(reference_points) != REFERENCE_POINTS or not scores:
        return {}
    n = REFERENCE_POINTS - 1
    edges = [reference_points[round(q * n)] for q in BANDS]  # the score at each band's lower edge
    top, names, beyond = reference_points[-1], BAND_NAMES, len(BAND_NAMES) - 1
    counts: dict[str, int] = {}
    for score in scores:
        # Scores at or below the top reference fall in the bands; past it, or not a number, "beyond".
        name = names[bisect.bisect_right(edges, score) if score <= top else beyond]
        counts[name] = counts.get(name, 0) + 1
    return counts
