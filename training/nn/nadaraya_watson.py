"""Nadaraya-Watson kernel regression as attention pooling.

f(x) = sum_i softmax_i(score(x, x_i)) * y_i with queries x, keys x_i (training inputs) and values y_i
(training targets). Gaussian score: -sum_d (x_d - k_d)^2 w_d^2 / 2; the bandwidth w is fixed
(non-parametric) or learned (parametric), one for all features or one per feature.

Metric learning (`rank` r > 0): a learned linear map L (r, D) replaces the bandwidths, and the score is
the Mahalanobis form -|L(x - k)|^2 / 2 (r < D: low rank, the kernel sees r learned directions). L starts as
w times r orthonormal directions, most telling first (the keys' least-squares fit of the values, then their
principal directions): with r = D, an orthogonal turn, training starts from the plain kernel exactly.
Both cases are one projection P: P(x) = x * w, or P(x) = L x; the kernel compares P(x) with P(k).

Linear trend (`trend`, regression): a local-constant smoother is biased wherever the target has a slope
(near the edges of the data, and along every direction in high dimensions). With a slope b (D,) the
values become y_i + b.(x - x_i), each key's target carried along the trend to the query:
    f(x) = sum_i a_i y_i + b.(x - sum_i a_i x_i),
one pooling of [y_i, x_i] by the same weights a_i. So the answer is still the attention-weighted
average of the keys' (trend-carried) values; b starts at the keys' least-squares slope.

The fused path expands the Gaussian score into a dot product; with x' = P(x), k' = P(k),
    -|x' - k'|^2 / 2 = x'.k' - |k'|^2 / 2 - |x'|^2 / 2,
drops the last term (constant along a softmax row) and runs scaled-dot-product attention on
q'' = [x', 1], k'' = [k', -|k'|^2 / 2] with scale 1, so the Q x K matrix is never materialized.

The expanded scores are as large as |x'| |k'|, and their rounding error grows with them, while the
direct form -(x - k)^2 w^2 / 2 stays exact where weights matter (near keys). So the fused path is taken
only while that error stays below `FUSED_MAX_SCORE_ERROR`; past it (large bandwidth x data radius) the
direct path answers.

Classification (`n_classes` > 0): the values are the keys' one-hot labels, so the pooled output is a
probability per class, p(c | x) = sum_i softmax_i * [y_i = c]; the model returns log p as its logits.

Prototypes (`prototypes`, for large data): the keys are M k-means centres of the training rows instead of every
row (`training/nn/prototypes.py`), each with its members' mean target (or class frequencies) as its value and
their count n_j, which the kernel adds as log n_j to the centre's score: the all-rows model with each cluster's
rows moved to its centre. Parametric models learn the centres and their values with the kernel. Training's
leave-one-out keeps its meaning: a row's own share is taken out of its prototype (count n_j - 1, value
(n_j v_j - y_i) / (n_j - 1)), so a row never attends to a prototype made only of itself. Scores are a
(batch x M) matrix product, never a (batch x M x D) tensor, so an epoch costs O(N M D).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import novelty
from .directions import initial_directions, least_squares
from .family import Family, Inputs, Outputs
from .prototypes import build_memory
from .standardize import Standardize

logger = logging.getLogger(__name__)
KERNELS = ("gaussian", "laplacian")
FUSED_MAX_SCORE_ERROR = 1e-4  # rounding error of the expanded scores the fused path may carry
DIRECT_DISTANCE_ELEMENTS = 1 << 16  # up to this many (query, key, feature) differences, distances without cdist


@dataclass(frozen=True)
class KeySide:
    """What attention needs of the keys alone, in the kernel's view (`NadarayaWatson.key_side`)."""

    centre: Tensor  # (D,) the keys' mean: the kernel is shift-invariant, and centring keeps the expansion precise
    keys: Tensor  # (K, P) the projected centred keys, P(k - centre)
    augmented: Tensor  # (K, W) the fused path's keys [k', -|k'|^2 / 2 (+ log count), 0, ...]
    memory: Tensor  # (K, W) what attention pools, zero-padded to the same width W
    columns: int  # V, the memory's own columns
    radius: float  # the largest of the projected keys' norms


@dataclass
class NWConfig:
    in_features: int = 1
    n_keys: int = 50
    learn_bandwidth: bool = True  # parametric (learned w) or non-parametric (fixed w)
    per_feature: bool = False  # one bandwidth per input feature
    rank: int = 0  # > 0: a learned linear map L (rank, in_features) before the kernel, instead of bandwidths
    bandwidth: float | None = None  # initial / fixed w; None draws U(0, 1) as in the reference recipe
    kernel: str = "gaussian"
    fused: bool = True  # gaussian only: attention kernel on augmented queries/keys
    chunk_size: int = 8192  # queries per chunk, bounds memory for large inputs
    n_classes: int = 0  # 0: regression; C > 0: classification over one-hot values
    trend: bool = False  # regression: values carried along a learned linear trend to the query
    # What the inputs are, for data from a user's file (training/data/tables.py): served by name, explained by row.
    feature_names: list[str] | None = None  # one per input feature
    class_labels: list | None = None  # the file's label of each class index
    key_rows: list[int] | None = None  # each key's row in the file
    prototypes: bool = False  # the keys are n_keys prototypes of the training rows, not the rows themselves
    seed: int = 0  # the prototypes' k-means seed
    # Per prototype, the training rows nearest its centre (file rows for a user's file, else training positions).
    prototype_rows: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.in_features < 1 or self.n_keys < 1:
            raise ValueError("in_features and n_keys must be positive")
        if self.n_classes < 0 or self.n_classes == 1:
            raise ValueError(f"n_classes must be 0 (regression) or at least 2, got {self.n_classes}")
        if not 0 <= self.rank <= self.in_features:
            raise ValueError(f"rank must be between 0 and in_features ({self.in_features}), got {self.rank}")
        if self.rank and self.per_feature:
            raise ValueError("choose per_feature bandwidths or a linear map (rank > 0), not both")
        if self.trend and self.n_classes:
            raise ValueError("a linear trend is for regression (n_classes = 0)")


class NadarayaWatson(nn.Module):
    supports_bf16 = False  # exp of kernel scores needs float32 precision

    def __init__(self, config: NWConfig):
        super().__init__()
        self.config = config
        n_bandwidths = config.in_features if config.per_feature else 1
        w = torch.full((n_bandwidths,), config.bandwidth) if config.bandwidth is not None else torch.rand(n_bandwidths)
        name = "L" if config.rank else "w"
        if config.rank:  # (r, D): w times the first r axes until `set_memory` turns them to principal directions
            w = w * torch.eye(config.in_features)[: config.rank]
        self.learned(name, w)
        if config.trend:  # (D,), in standardized units; `set_memory` starts it at the keys' least-squares slope
            self.learned("slope", torch.zeros(config.in_features))
        # The training set is the attention memory: keys (K, D) and values (K,), both standardized,
        # or for classification one-hot values (K, C); or K prototypes of it (learned with the kernel).
        self.make_memory(config.n_keys)
        self.x_scaler = Standardize(config.in_features)
        self.y_scaler = Standardize(1)
        self.kept_key_side: tuple[list, KeySide] | None = None  # (what it was computed from, the key side)

    def make_memory(self, n_keys: int) -> None:
        config = self.config
        values = (n_keys, config.n_classes) if config.n_classes else (n_keys,)
        learned = config.prototypes and config.learn_bandwidth
        for name, shape in (("keys", (n_keys, config.in_features)), ("values", values)):
            if name in self._parameters or name in self._buffers:
                delattr(self, name)
            if learned:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape))
        if config.prototypes:
            self.register_buffer("counts", torch.ones(n_keys))  # training rows per prototype
            # Training only (not saved): each training row's prototype and its standardized target or one-hot.
            self.register_buffer("member_of", torch.zeros(0, dtype=torch.long), persistent=False)
            self.register_buffer("member_values", torch.zeros(0), persistent=False)

    def learned(self, name: str, value: Tensor) -> None:
        """A parameter when the kernel is learned (parametric), else a fixed buffer."""
        if self.config.learn_bandwidth:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    @torch.no_grad()
    def set_memory(self, x: Tensor, y: Tensor, rows: list[int] | None = None) -> None:
        """Store raw training inputs (N, D) and targets (N,) as standardized keys and values (class labels (N,) as
        one-hot values), or with `prototypes` the M prototypes of them; `rows` names the training rows (file rows)."""
        x = self.x_scaler(x.reshape(len(x), -1))
        y = y.long() if self.config.n_classes else self.y_scaler(y.reshape(-1, 1)).squeeze(-1)
        if self.config.prototypes:
            self.set_prototypes(x, y, rows)
        else:
            self.keys.copy_(x)
            self.values.copy_(F.one_hot(y, self.config.n_classes) if self.config.n_classes else y)
        if self.config.rank:
            directions = initial_directions(self.keys, self.values)  # (D, D), orthonormal rows
            self.L.copy_(self.L.norm(dim=-1, keepdim=True) * directions[: self.config.rank])  # (r, D)
        if self.config.trend:
            self.slope.copy_(least_squares(self.keys, self.values)[:, 0])  # (D,)

    def set_prototypes(self, x: Tensor, y: Tensor, rows: list[int] | None) -> None:
        """k-means prototypes of standardized rows; centres no row chose are dropped (n_keys may shrink)."""
        if self.config.n_keys >= len(x):
            logger.warning(
                "a memory of %d prototypes asked for %d training rows: every row is its own prototype (all rows)",
                self.config.n_keys,
                len(x),
            )
        memory = build_memory(x, y, min(self.config.n_keys, len(x)), self.config.n_classes, self.config.seed)
        self.config.n_keys = len(memory.keys)
        device = self.x_scaler.mean.device
        self.make_memory(self.config.n_keys)
        self.to(device)
        self.keys.copy_(memory.keys)
        self.values.copy_(memory.values)
        self.counts.copy_(memory.counts)
        self.member_of = memory.member_of.to(device)
        self.member_values = (F.one_hot(y, self.config.n_classes).to(x.dtype) if self.config.n_classes else y).to(
            device
        )
        names = rows if rows is not None else list(range(len(x)))
        self.config.prototype_rows = [[int(names[i]) for i in near if i >= 0] for near in memory.nearest.tolist()]

    def memory(self) -> Tensor:
        """What attention pools (K, V): the values (V = 1 or C one-hot columns), and with a trend the keys too."""
        values = self.values.reshape(self.keys.shape[0], -1)  # (K, 1) or (K, C)
        return torch.cat([values, self.keys], dim=-1) if self.config.trend else values  # (K, 1 + D)

    def readout(self, q: Tensor, pooled: Tensor) -> Tensor:
        """Standardized queries (Q, D) and pooled memory (Q, V) -> outputs (Q,) or (Q, C)."""
        if self.config.trend:  # sum_i a_i y_i + slope . (q - sum_i a_i k_i)
            return pooled[:, 0] + (q - pooled[:, 1:]) @ self.slope
        return pooled if self.config.n_classes else pooled[:, 0]

    def project(self, x: Tensor) -> Tensor:
        """The kernel's view of standardized inputs: (N, D) -> x * w (N, D), or L x (N, r)."""
        return x @ self.L.T if self.config.rank else x * self.w

    def forward(
        self, x: Tensor, *, exclude: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Raw queries (Q,) or (Q, D) -> raw predictions (Q,) or log-probabilities (Q, C), and weights (Q, K)
        when asked.

        `exclude` (Q,) gives for each query the index of a key it must not attend to
        (leave-one-out training: a training point never attends to itself).
        """
        queries = self.x_scaler(x.reshape(x.shape[0], self.config.in_features))  # (Q, D)
        outs, weights = [], []
        for start in range(0, queries.shape[0], self.config.chunk_size):
            chunk = slice(start, start + self.config.chunk_size)
            skip = None if exclude is None else exclude[chunk]
            out, w = self._attend(queries[chunk], skip, need_weights)
            outs.append(out)
            weights.append(w)
        out = torch.cat(outs)  # (Q,) or (Q, C)
        if self.config.n_classes:
            pred = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))  # (Q, C)
        else:
            pred = self.y_scaler.inverse(out[:, None]).squeeze(-1)  # (Q,)
        return pred, torch.cat(weights) if need_weights else None

    def _attend(self, q: Tensor, exclude: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        fused, side = None, None
        if self.config.fused and self.config.kernel == "gaussian" and not need_weights:
            side = self.key_side()
            qp = self.project(q - side.centre)  # (Q, P)
            fused = qp if self.expansion_is_exact(qp, side) else None
        if self.config.prototypes and (exclude is not None or fused is None):
            return self.attend_prototypes(q, exclude, need_weights)
        mask = None
        if exclude is not None:
            mask = torch.ones(q.shape[0], self.keys.shape[0], dtype=torch.bool, device=q.device)  # (Q, K)
            mask[torch.arange(q.shape[0], device=q.device), exclude] = False
        if fused is not None:
            return self.readout(q, self.fused_attention(fused, side, mask)), None
        weights = F.softmax(self.scores(q, mask), dim=-1)  # (Q, K)
        return self.readout(q, weights @ self.memory()), weights if need_weights else None

    def key_side(self) -> KeySide:
        """The keys' side of attention. Kept while no gradient flows through it and the model's own tensors stay the
        same tensors, unchanged in place (serving: computed once); else computed per pass."""
        tensors = [*self._parameters.values(), *self._buffers.values()]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self.compute_key_side()
        stamp = [(t.data_ptr(), t._version, t.dtype) for t in tensors]
        if self.kept_key_side is None or self.kept_key_side[0] != stamp:
            with torch.no_grad():
                self.kept_key_side = (stamp, self.compute_key_side())
        return self.kept_key_side[1]

    def compute_key_side(self) -> KeySide:
        centre = self.keys.mean(0)  # (D,)
        k = self.project(self.keys - centre)  # (K, P)
        bias = -(k**2).sum(-1, keepdim=True) / 2  # (K, 1); with prototypes + log count, folded into the key
        if self.config.prototypes:
            bias = bias + self.counts.log()[:, None]
        augmented = torch.cat([k, bias], dim=-1)  # (K, P+1)
        # One width for q, k and v (fused kernels need one head size): zero columns add nothing to q.k.
        memory = self.memory()  # (K, V)
        width = max(augmented.shape[1], memory.shape[1])
        padded = F.pad(augmented, (0, width - augmented.shape[1])), F.pad(memory, (0, width - memory.shape[1]))
        return KeySide(centre, k, *padded, memory.shape[1], float(k.detach().norm(dim=-1).max()))

    @torch.no_grad()
    def nearest_key_distance(self, x: Tensor) -> Tensor:
        """Raw queries (Q,) or (Q, D) -> (Q,) distance to the nearest key in the kernel's units (bandwidths):
        the novelty score (`training/nn/novelty.py`). Exact differences for a small batch, else cdist (one Q x K
        matrix, the size of a pass's scores, by its matrix product past 25 rows): the two agree to ~1e-6 relative."""
        side = self.key_side()
        q = self.project(self.x_scaler(x.reshape(x.shape[0], self.config.in_features)) - side.centre)  # (Q, P)
        p = 2.0 if self.config.kernel == "gaussian" else 1.0
        if q.numel() * len(side.keys) <= DIRECT_DISTANCE_ELEMENTS:
            return torch.linalg.vector_norm(q[:, None, :] - side.keys[None], ord=p, dim=-1).amin(-1)  # (Q,)
        return torch.cdist(q, side.keys, p=p).min(-1).values  # (Q,)

    def attend_prototypes(self, q: Tensor, exclude: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """Attention over the prototypes from (Q x M) scores; with `exclude` (training rows' indices) each row's own
        share is taken out of its prototype: count n - 1 and value (n v - y) / (n - 1)."""
        s = self.prototype_scores(q)  # (Q, M)
        memory = self.memory()  # (M, V)
        if exclude is None:
            weights = F.softmax(s, dim=-1)
            return self.readout(q, weights @ memory), weights if need_weights else None
        rows, own = torch.arange(len(q), device=q.device), self.member_of[exclude]  # (Q,), (Q,)
        n = self.counts[own]  # (Q,)
        s = s.clone()
        s[rows, own] = s[rows, own] + torch.log((n - 1).clamp_min(0) / n)  # -inf: a prototype of this row alone
        weights = F.softmax(s, dim=-1)  # (Q, M)
        pooled = weights @ memory  # (Q, V)
        y = self.member_values[exclude].reshape(len(q), -1)  # (Q, V0): the row's own target or one-hot
        v = memory[own, : y.shape[1]]  # (Q, V0)
        without = (n[:, None] * v - y) / (n[:, None] - 1).clamp_min(1)
        pooled = torch.cat(
            [pooled[:, : y.shape[1]] + weights[rows, own, None] * (without - v), pooled[:, y.shape[1] :]], -1
        )
        return self.readout(q, pooled), weights if need_weights else None

    def prototype_scores(self, q: Tensor) -> Tensor:
        """Kernel scores (Q, M) of standardized queries against the prototypes, plus log count: one matrix product
        when its rounding error allows (as the fused path), else exact distances; never (Q x M x D)."""
        side = self.key_side()
        qp, kp = self.project(q - side.centre), side.keys
        if self.config.kernel == "gaussian" and self.expansion_is_exact(qp, side):  # -|q - k|^2 / 2, expanded
            s = qp @ kp.T - kp.square().sum(-1) / 2 - qp.square().sum(-1, keepdim=True) / 2
        elif self.config.kernel == "gaussian":
            s = -torch.cdist(qp, kp, compute_mode="donot_use_mm_for_euclid_dist").square() / 2
        else:
            s = -torch.cdist(qp, kp, p=1.0)
        return s + self.counts.log()

    def fused_is_exact(self, q: Tensor) -> bool:
        """Whether the expanded scores' rounding error for standardized queries (Q, D) is under the bound."""
        side = self.key_side()
        return self.expansion_is_exact(self.project(q - side.centre), side)

    @staticmethod
    def expansion_is_exact(qp: Tensor, side: KeySide) -> bool:
        """The same for projected centred queries (Q, P): their error is about eps x |q'| |k'| + |k'|^2 / 2."""
        size = float(qp.detach().norm(dim=-1).max()) * side.radius + side.radius**2 / 2
        return size * torch.finfo(qp.dtype).eps < FUSED_MAX_SCORE_ERROR

    def scores(self, q: Tensor, mask: Tensor | None = None) -> Tensor:
        """Direct kernel scores (Q, K) for standardized queries (Q, D); materializes Q x K x D."""
        # Differences first, then the projection: exact near the keys however large w or L is.
        diff = self.project(q[:, None, :] - self.keys[None, :, :])  # (Q, K, D) or (Q, K, r)
        if self.config.kernel == "gaussian":
            s = -(diff**2).sum(-1) / 2
        else:
            s = -diff.abs().sum(-1)
        return s if mask is None else s.masked_fill(~mask, torch.finfo(s.dtype).min)

    def fused_attention(self, qp: Tensor, side: KeySide, mask: Tensor | None = None) -> Tensor:
        """Gaussian NW via scaled-dot-product attention on augmented queries/keys: projected centred queries (Q, P)
        -> pooled memory (Q, V)."""
        width = side.augmented.shape[1]
        q_aug = torch.cat([qp, torch.ones_like(qp[:, :1]), qp.new_zeros(len(qp), width - qp.shape[1] - 1)], -1)
        out = F.scaled_dot_product_attention(
            q_aug[None, None],
            side.augmented[None, None],
            side.memory[None, None],
            attn_mask=None if mask is None else mask[None, None],
            scale=1.0,
        )  # (1, 1, Q, W)
        return out[0, 0, :, : side.columns]


def predict(
    model: NadarayaWatson, inputs: Inputs, *, need_weights: bool = False, head_weights: bool = False
) -> Outputs:
    """Rows (B, D) -> (B,) predictions or (B, C) log-probabilities, and the weights over the keys (B, K) when asked."""
    out, weights = model(inputs.x, need_weights=need_weights)
    return Outputs(out, weights)


def novelty_scores(model: NadarayaWatson, inputs: Inputs, outputs: Outputs | None = None) -> Tensor:
    """Classifiers: the answer's entropy; regression: the distance to the nearest key in bandwidths."""
    if model.config.n_classes:
        outputs = outputs or predict(model, inputs)
        return novelty.normalized_entropy(outputs.out.exp())
    return model.nearest_key_distance(inputs.x)


FAMILY = Family(
    "nw",
    "Nadaraya-Watson kernel regression",
    NWConfig,
    NadarayaWatson,
    predict,
    novelty_scores,
    explains_training_rows=True,
)
