"""A bounded attention memory for Nadaraya-Watson on large data: M prototypes stand for the N training rows.

The prototypes start as k-means centroids of the standardized training inputs (Lloyd's iterations on a seeded
sample of at most `SAMPLE_ROWS` rows, then one assignment pass over every row). Each prototype carries its
members' mean target (regression) or class frequencies (classification) as its value and their count: the
kernel weighs a prototype by its count (log count added to its score), so with every row its own prototype the
model is the all-rows model, and with fewer it is that model with each cluster's rows moved to its centre.

Everything here works in chunks of rows, so memory stays O(chunk x M), never O(N x M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLE_ROWS = 65_536  # rows the centroids are fit on; every row is assigned afterwards
LLOYD_ITERATIONS = 8
CHUNK_ROWS = 16_384
MEMBER_ROWS = 5  # file rows kept per prototype for explanations: those nearest its centre


@dataclass
class Memory:
    keys: Tensor  # (M, D) standardized centres
    values: Tensor  # (M,) mean standardized target, or (M, C) class frequencies
    counts: Tensor  # (M,) training rows per prototype (float)
    member_of: Tensor  # (N,) each training row's prototype
    nearest: Tensor  # (M, MEMBER_ROWS) positions (in the training rows) of each prototype's nearest members; -1: none


def nearest_centre(x: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """For rows (N, D): the index of the nearest centre (N,) and the squared distance to it (N,), in chunks.
    |x - c|^2 = |x|^2 - 2 x.c + |c|^2, and |x|^2 does not change which centre is nearest: one matrix product."""
    half_norms = centres.square().sum(-1) / 2  # (M,)
    index, distance = [], []
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start : start + CHUNK_ROWS]
        best = torch.addmm(half_norms, chunk, centres.T, alpha=-1).min(-1)  # |c|^2/2 - x.c: (chunk, M) -> (chunk,)
        index.append(best.indices)
        distance.append((2 * best.values + chunk.square().sum(-1)).clamp_min(0))
    return torch.cat(index), torch.cat(distance)


def kmeans(x: Tensor, m: int, seed: int = 0) -> Tensor:
    """m centres (m, D) of rows x (N, D): k-means++-like seeding by distance sampling, then Lloyd's iterations,
    on a seeded sample. An emptied centre moves to the row farthest from its centre."""
    generator = torch.Generator().manual_seed(seed)
    sample = x if len(x) <= SAMPLE_ROWS else x[torch.randperm(len(x), generator=generator)[:SAMPLE_ROWS]]
    centres = seed_centres(sample, m, generator)
    for _ in range(LLOYD_ITERATIONS):
        index, distance = nearest_centre(sample, centres)
        sums = torch.zeros_like(centres).index_add_(0, index, sample)
        counts = torch.bincount(index, minlength=m).to(sample.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            far = distance.topk(int(empty.sum())).indices
            centres[empty] = sample[far]
    return centres


def seed_centres(x: Tensor, m: int, generator: torch.Generator, rounds: int = 64) -> Tensor:
    """k-means++ in at most `rounds` rounds: each adds centres drawn in proportion to the squared distance to the
    nearest centre so far; that distance is updated with the new centres only (O(N m D) in all)."""
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    distance = torch.cdist(x, centres).square().min(-1).values  # (N,)
    per_round = max(1, -(-(m - 1) // rounds))
    while len(centres) < m:
        take = min(per_round, m - len(centres))
        picked = torch.multinomial(distance.clamp_min(0) + 1e-12, take, replacement=False, generator=generator)
        new = x[picked]
        centres = torch.cat([centres, new])
        distance = torch.minimum(distance, nearest_centre(x, new)[1])
    return centres


def build_memory(x: Tensor, y: Tensor, m: int, n_classes: int = 0, seed: int = 0) -> Memory:
    """Prototypes of standardized rows x (N, D) with standardized targets y (N,) or class indices (N,)."""
    centres = kmeans(x, m, seed)
    member_of, distance = nearest_centre(x, centres)
    counts = torch.bincount(member_of, minlength=m).to(x.dtype)
    if n_classes:
        totals = torch.zeros(m, n_classes, dtype=x.dtype).index_add_(
            0, member_of, F.one_hot(y.long(), n_classes).to(x.dtype)
        )
    else:
        totals = torch.zeros(m, dtype=x.dtype).index_add_(0, member_of, y.to(x.dtype))
    shape = (-1, 1) if n_classes else (-1,)
    values = totals / counts.clamp_min(1).reshape(shape)
    keep = counts > 0  # a centre no row chose has nothing to say: dropped
    old_to_new = torch.cumsum(keep.long(), 0) - 1
    return Memory(
        centres[keep],
        values[keep],
        counts[keep],
        old_to_new[member_of],
        nearest_members(member_of, distance, old_to_new, keep),
    )


def nearest_members(member_of: Tensor, distance: Tensor, old_to_new: Tensor, keep: Tensor) -> Tensor:
    """Per kept prototype, the positions of its MEMBER_ROWS members nearest its centre (-1 where it has fewer)."""
    m = int(keep.sum())
    nearest = torch.full((m, MEMBER_ROWS), -1, dtype=torch.long)
    order = torch.argsort(distance, stable=True)  # nearest rows first
    prototype = old_to_new[member_of[order]]
    # Rank of each row within its prototype, in distance order: position minus the prototype's first position.
    by_prototype = torch.argsort(prototype, stable=True)
    sorted_prototype = prototype[by_prototype]
    first = torch.searchsorted(sorted_prototype, sorted_prototype, side="left")
    rank = torch.arange(len(sorted_prototype)) - first
    chosen = rank < MEMBER_ROWS
    nearest[sorted_prototype[chosen], rank[chosen]] = order[by_prototype[chosen]]
    return nearest
