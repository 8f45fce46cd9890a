"""Multi-head attention sequence model: pre-norm self-attention blocks, attention pooling, a head.

Input (B, T, D_in) with valid lengths (B,) -> a value per sequence (regression) or class logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import novelty
from .attention import AttentionPooling, MultiHeadAttention
from .family import Family, Inputs, Outputs
from .standardize import Standardize

TASKS = ("regression", "classification")


@dataclass
class SequenceConfig:
    in_features: int
    out_features: int = 1  # 1 for regression, the number of classes for classification
    task: str = "regression"
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.0
    # What the inputs are, for data from a user's file (training/data/tables.py): steps served by feature name.
    feature_names: list[str] | None = None  # one per step feature
    class_labels: list | None = None  # the file's label of each class index

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


# helpers


def sinusoidal_positions(n_steps: int, d_model: int, device: torch.device | None = None) -> Tensor:
    """Fixed sine/cosine position codes (T, D): no length limit and nothing to learn."""
    position = torch.arange(n_steps, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, device=device) * (-math.log(10000.0) / d_model))  # (D/2,)
    codes = torch.zeros(n_steps, d_model, device=device)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return codes


# classes


class Block(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + FF(LN(x))."""

    def __init__(self, config: SequenceConfig):
        super().__init__()
        d = config.d_model
        self.ln_1 = nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d_model=d, n_heads=config.n_heads, dropout=config.dropout)
        self.ln_2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, config.ff_mult * d), nn.GELU(), nn.Linear(config.ff_mult * d, d), nn.Dropout(config.dropout)
        )

    def forward(self, x: Tensor, valid_lens: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """`need_weights` False runs the fused attention kernel and returns no weights."""
        h = self.ln_1(x)
        attended, weights = self.attn(h, h, h, valid_lens, need_weights=need_weights)  # (B, T, D), (B, H, T, T)
        x = x + attended
        return x + self.ff(self.ln_2(x)), weights


class SequenceModel(nn.Module):
    supports_bf16 = True

    def __init__(self, config: SequenceConfig):
        super().__init__()
        self.config = config
        self.x_scaler = Standardize(config.in_features)
        self.y_scaler = Standardize(1)  # regression targets; identity for classification
        self.embed = nn.Linear(config.in_features, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.pool = AttentionPooling(d_model=config.d_model)
        self.head = nn.Linear(config.d_model, config.out_features)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, *, need_weights: bool = False, head_weights: bool = True
    ) -> tuple[Tensor, dict[str, Tensor | None] | None]:
        """Raw (B, T, D_in) and lengths (B,) -> (B,) raw predictions or (B, C) logits; weights when asked.

        Weights: "pooling" (B, T) over steps, and "heads" (B, L, H, T, T) per layer and head, or None
        when `head_weights` is False (the blocks then keep the fused attention kernel: O(T) memory).
        """
        want_heads = need_weights and head_weights
        B, T, _ = x.shape
        h = self.embed(self.x_scaler(x)) + sinusoidal_positions(T, self.config.d_model, x.device)  # (B, T, D)
        per_layer = []
        for block in self.blocks:
            h, w = block(h, lengths, want_heads)
            per_layer.append(w)
        pooled, pool_weights = self.pool(self.ln_f(h), lengths, need_weights=need_weights)  # (B, D), (B, T)
        out = self.head(pooled)  # (B, C)
        if self.config.task == "regression":
            out = self.y_scaler.inverse(out).squeeze(-1)  # (B,)
        if not need_weights:
            return out, None
        heads = torch.stack(per_layer, dim=1) if want_heads else None
        return out, {"pooling": pool_weights, "heads": heads}


# the family


def predict(model: SequenceModel, inputs: Inputs, *, need_weights: bool = False, head_weights: bool = False) -> Outputs:
    """Padded steps (B, T, D) and lengths (B,) -> (B,) predictions or (B, C) logits; when asked, the weights:
    "pooling" (B, T), and "heads" (B, L, H, T, T) with `head_weights` (else the fused kernel runs)."""
    out, weights = model(inputs.x, inputs.lengths, need_weights=need_weights, head_weights=head_weights)
    return Outputs(out, weights)


def novelty_scores(model: SequenceModel, inputs: Inputs, outputs: Outputs | None = None) -> Tensor:
    """The regressor: its pooling weights' entropy; a classifier: its answer's entropy."""
    outputs = outputs or predict(model, inputs, need_weights=True)
    if model.config.task == "regression":
        return novelty.pooling_entropy(outputs.weights["pooling"], inputs.lengths)
    return novelty.normalized_entropy(torch.softmax(outputs.out.double(), -1))


FAMILY = Family("mha", "multi-head attention sequence model", SequenceConfig, SequenceModel, predict, novelty_scores)
