"""Pixel self-attention (SAGAN style) inside a small convolutional classifier.

Over the N = H*W positions of a feature map x (B, C, H, W), 1x1 convolutions give queries f(x) and keys
g(x) with C' = max(1, C // reduction) channels and values v(x) with C channels; every position i
attends over every position j:
    alpha_{i, j} = softmax_j(f(x)_i . g(x)_j / sqrt(C'))        (scaled dot product: each row sums to 1)
    o_i = sum_j alpha_{i, j} v(x)_j,        y_i = gamma * o_i + x_i
gamma is a learned scalar that starts at 0: the block starts as the identity, so the network first
learns from local (convolutional) evidence and lets non-local evidence in as gamma moves away from 0.

The network: `depth` 3x3 convolutions (BatchNorm, ReLU) at full resolution, the attention block after the
`attention_at`-th of them, then dropout and a linear head over the flattened map (small images: where a
stroke is matters, so the head keeps positions). Inputs are raw images (B, C, H, W) standardized per channel
by buffers fitted on the training split, so a served model takes raw pixel values.

In training only, with `shift` > 0, each image is moved by a random whole number of pixels (up to `shift`
in each direction, the edge pixels repeated): on a thousand 8 x 8 digits this is worth about one point of
test accuracy, as the same digit written a pixel off no longer looks new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import novelty
from .attention import scaled_dot_product
from .family import Family, Inputs, Outputs
from .standardize import Standardize


@dataclass
class PixelConfig:
    in_channels: int = 1
    height: int = 8
    width: int = 8
    n_classes: int = 10
    channels: int = 32
    depth: int = 2  # 3x3 convolutions
    attention_at: int = 1  # the attention block follows this many convolutions (1..depth)
    reduction: int = 8  # queries and keys have max(1, channels // reduction) channels
    dropout: float = 0.0
    shift: int = 0  # training only: random moves of up to this many pixels
    value_range: list[float] | None = None  # [low, high] of the training pixels; serving refuses values outside
    class_labels: list | None = None  # the label of each class index (None: the indices)

    def __post_init__(self) -> None:
        sizes = ("in_channels", "height", "width", "channels", "depth", "reduction")
        if any(getattr(self, name) < 1 for name in sizes) or self.n_classes < 2:
            raise ValueError(f"{', '.join(sizes)} must be positive and n_classes at least 2")
        if not 1 <= self.attention_at <= self.depth:
            raise ValueError(f"attention_at must be in 1..depth={self.depth}, got {self.attention_at}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.shift < min(self.height, self.width):
            raise ValueError(f"shift must be in [0, {min(self.height, self.width)}), got {self.shift}")
        if self.value_range is not None:
            self.value_range = [float(v) for v in self.value_range]  # JSON gives a list
            if len(self.value_range) != 2 or not self.value_range[0] < self.value_range[1]:
                raise ValueError(f"value_range must be [low, high] with low < high, got {self.value_range}")

    @property
    def positions(self) -> int:
        return self.height * self.width


# helpers


def random_shift(x: Tensor, shift: int) -> Tensor:
    """Each image of (B, C, H, W) moved by its own random (dy, dx) in [-shift, shift]^2, edge pixels repeated."""
    B, C, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")  # (B, C, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, B, 1), device=x.device)  # (B, 1) each
    rows = torch.arange(H, device=x.device) + dy  # (B, H)
    cols = torch.arange(W, device=x.device) + dx  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


# classes


class PixelSelfAttention(nn.Module):
    """y = gamma * attention(x) + x over the H*W positions of (B, C, H, W); the identity while gamma = 0."""

    def __init__(self, *, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, C, H, W) -> (B, C, H, W), and the weights (B, N, N) when asked (query position x key position,
        positions numbered row by row: i = row * W + col). Without weights the fused attention kernel runs."""
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2).transpose(1, 2)  # (B, N, C')
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, N, C)
        out, weights = scaled_dot_product(q, k, v, need_weights=need_weights)  # (B, N, C), (B, N, N)
        out = out.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.gamma * out, weights


class PixelModel(nn.Module):
    supports_bf16 = True

    def __init__(self, config: PixelConfig):
        super().__init__()
        self.config = config
        C = config.channels
        self.x_scaler = Standardize(config.in_channels)  # per channel
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(config.in_channels if i == 0 else C, C, kernel_size=3, padding=1),
                nn.BatchNorm2d(C),
                nn.ReLU(),
            )
            for i in range(config.depth)
        )
        self.attention = PixelSelfAttention(channels=C, reduction=config.reduction)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(C * config.positions, config.n_classes)

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Raw images (B, C_in, H, W) -> logits (B, n_classes); with `need_weights` also
        {"attention": (B, N, N) rows over key positions summing to 1, "gamma": () the block's gamma}."""
        if self.training and self.config.shift:
            x = random_shift(x, self.config.shift)  # (B, C_in, H, W)
        h = self.x_scaler(x.movedim(1, -1)).movedim(-1, 1)  # (B, C_in, H, W), standardized per channel
        weights = None
        for i, conv in enumerate(self.convs, start=1):
            h = conv(h)  # (B, C, H, W)
            if i == self.config.attention_at:
                h, weights = self.attention(h, need_weights=need_weights)  # (B, C, H, W), (B, N, N)
        logits = self.head(self.dropout(h.flatten(1)))  # (B, n_classes)
        if not need_weights:
            return logits, None
        return logits, {"attention": weights, "gamma": self.attention.gamma.detach()}


# the family


def predict(model: PixelModel, inputs: Inputs, *, need_weights: bool = False, head_weights: bool = False) -> Outputs:
    """Raw images (B, C, H, W) -> logits (B, classes); when asked, {"attention": (B, N, N), "gamma": ()}."""
    logits, weights = model(inputs.x, need_weights=need_weights)
    return Outputs(logits, weights)


def novelty_scores(model: PixelModel, inputs: Inputs, outputs: Outputs | None = None) -> Tensor:
    """The answer's entropy."""
    outputs = outputs or predict(model, inputs)
    return novelty.normalized_entropy(torch.softmax(outputs.out.double(), -1))


FAMILY = Family("pixel", "pixel self-attention", PixelConfig, PixelModel, predict, novelty_scores)
