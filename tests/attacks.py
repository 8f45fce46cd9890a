"""Attacks on what NW explanations reveal of the training rows, as a client of the served API would run them.

Weight inversion (`invert_weights`): a Gaussian kernel's weight is w_i(x) = exp(-(x - k_i)' M (x - k_i) / 2) / Z(x),
so log w_i(x) = a_i . x + b_i + c(x) with a_i = M k_i + g and b_i = -k_i' M k_i / 2 + beta (g, beta: one gauge
for all keys). Two weights of one query give a_i - a_j and b_i - b_j by least squares over many queries; then
b_i = -a_i' P a_i / 2 + h . a_i + gamma is linear in P = M^-1, h = P g and gamma, and k_i = P a_i - h: every
key's inputs, the kernel's metric unknown. With every weight at hand, prediction = sum_i w_i y_i gives the targets.

Rank tracing (`place_by_ranks`): with the top keys' identities alone, the queries where two keys swap rank lie
on their bisector n . x = o (n along k_b - k_a, the features' scales known); a grid of queries traces each
bisector between the keys ranked at a point, and k_b - k_a = lambda n, n . (k_a + k_b) / 2 = o place them.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np

MIN_WEIGHT = 1e-4  # weights are rounded to 7 decimals: below this their logarithm is mostly rounding


def weights_of(explanation: dict, n_keys: int) -> np.ndarray:
    """(K,) every weight an explanation states: the full vector, or its top keys' (NaN where none is given)."""
    if "weights" in explanation:
        return np.asarray(explanation["weights"], dtype=float)
    weights = np.full(n_keys, np.nan)
    for key in explanation.get("top_keys", []):
        if "weight" in key:
            weights[key["index"]] = key["weight"]
    return weights


def invert_weights(queries: np.ndarray, explanations: list[dict], n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries (Q, D) and their explanations -> estimated inputs (K, D) and targets (K,) of every key; NaN where
    the answers carry too little (no weights: nothing)."""
    Q, D = queries.shape
    W = np.stack([weights_of(e, n_keys) for e in explanations])  # (Q, K)
    seen = np.nan_to_num(W) >= MIN_WEIGHT  # (Q, K)
    keys, targets = np.full((n_keys, D), np.nan), np.full(n_keys, np.nan)
    known = seen.sum(0) > D + 1  # (K,) keys stated often enough to fit a_i and b_i
    if known.sum() < (D + 1) * (D + 2) // 2 + 1:
        return keys, targets
    a, b = log_linear_fit(queries, W, seen & known)  # (K, D), (K,)
    P, h = metric_and_gauge(a[known], b[known])
    keys[known] = a[known] @ P - h
    if not np.isnan(W).any():  # every weight: prediction = W y
        predictions = np.array([e["prediction"] for e in explanations], dtype=float)
        targets = np.linalg.lstsq(W, predictions, rcond=None)[0]
    return keys, targets


def log_linear_fit(queries: np.ndarray, W: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a (K, D), b (K,) with log w_qi - log w_qt = (a_i - a_t) . x_q + b_i - b_t, t each query's top key."""
    Q, K = W.shape
    D = queries.shape[1]
    rows, rhs = [], []
    for q in range(Q):
        stated = np.flatnonzero(seen[q])
        if len(stated) < 2:
            continue
        top = stated[np.argmax(W[q, stated])]
        for i in stated[stated != top]:
            row = np.zeros(K * (D + 1))
            row[i * (D + 1) : (i + 1) * (D + 1)] = [*queries[q], 1.0]
            row[top * (D + 1) : (top + 1) * (D + 1)] = [*-queries[q], -1.0]
            rows.append(row)
            rhs.append(np.log(W[q, i]) - np.log(W[q, top]))
    solution = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0].reshape(K, D + 1)
    return solution[:, :D], solution[:, D]


def metric_and_gauge(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P (D, D) symmetric and h (D,) from b_i = -a_i' P a_i / 2 + h . a_i + gamma, by least squares."""
    D = a.shape[1]
    pairs = [(d, e) for d in range(D) for e in range(d, D)]
    quadratic = np.stack([-a[:, d] * a[:, e] * (0.5 if d == e else 1.0) for d, e in pairs], 1)
    solution = np.linalg.lstsq(np.hstack([quadratic, a, np.ones((len(a), 1))]), b, rcond=None)[0]
    P = np.zeros((D, D))
    for (d, e), p in zip(pairs, solution):
        P[d, e] = P[e, d] = p
    return P, solution[len(pairs) : len(pairs) + D]


def place_by_ranks(
    ranks: Callable[[np.ndarray], list[list[int]]], center: np.ndarray, side: int, radius: float = 1.5
) -> tuple[int, np.ndarray]:
    """The key ranked first at `center` (D,), placed from the top keys' ranks on a grid of `side`^D queries within
    `radius` of it (coordinates in which the kernel is isotropic: standardized features): (its index, its place)."""
    D = len(center)
    axes = [np.linspace(c - radius, c + radius, side) for c in center]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)  # (side, ..., side, D)
    ranked = ranks(np.vstack([center, grid.reshape(-1, D)]))
    near = ranked[0]  # the keys ranked at the centre: the one to place and its neighbours
    order = np.array([position_of(r, near) for r in ranked[1:]]).reshape(*grid.shape[:-1], len(near))
    planes = {}
    for a, b in combinations(range(len(near)), 2):
        points = swap_points(grid, order[..., a], order[..., b])  # (E, D)
        if len(points) > D:
            planes[a, b] = bisector(points, grid, order[..., a] < order[..., b])
    return near[0], place_keys(planes, len(near), D)[0]


def position_of(ranked: list[int], keys: list[int]) -> list[float]:
    """Each key's rank in one answer's top keys; a key not among them ranks below all that are."""
    return [ranked.index(k) if k in ranked else len(ranked) for k in keys]


def swap_points(grid: np.ndarray, rank_a: np.ndarray, rank_b: np.ndarray) -> np.ndarray:
    """Midpoints (E, D) of neighbouring grid queries where keys a and b swap rank."""
    points = []
    for axis in range(grid.ndim - 1):
        first, rest = range(grid.shape[axis] - 1), range(1, grid.shape[axis])
        cut = [(rank_a, first), (rank_b, first), (rank_a, rest), (rank_b, rest)]
        a0, b0, a1, b1 = (np.take(r, i, axis) for r, i in cut)
        known = (a0 != b0) & (a1 != b1)  # equal ranks: neither is among the top keys
        swapped = known & ((a0 < b0) != (a1 < b1))
        points.append(((np.take(grid, first, axis) + np.take(grid, rest, axis)) / 2)[swapped])
    return np.vstack(points)


def bisector(points: np.ndarray, grid: np.ndarray, a_first: np.ndarray) -> tuple[np.ndarray, float]:
    """The hyperplane n . x = o (|n| = 1) through swap points (E, D), n pointing to where b ranks first."""
    centre = points.mean(0)
    n = np.linalg.svd(points - centre)[2][-1]  # (D,) the direction the points do not spread in
    side = grid[a_first] @ n - centre @ n  # where a ranks first: n . x < o
    if side.mean() > 0:
        n = -n
    return n, float(n @ centre)


def place_keys(planes: dict, m: int, D: int) -> np.ndarray:
    """Keys (m, D) from bisectors of pairs (a, b): k_b - k_a = lambda_ab n_ab and n_ab . (k_a + k_b) / 2 = o_ab."""
    unknowns = m * D + len(planes)
    rows, rhs = [], []
    for p, ((a, b), (n, o)) in enumerate(planes.items()):
        for d in range(D):
            row = np.zeros(unknowns)
            row[b * D + d], row[a * D + d], row[m * D + p] = 1.0, -1.0, -n[d]
            rows.append(row)
            rhs.append(0.0)
        row = np.zeros(unknowns)
        row[a * D : a * D + D] += n / 2
        row[b * D : b * D + D] += n / 2
        rows.append(row)
        rhs.append(o)
    return np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0][: m * D].reshape(m, D)
