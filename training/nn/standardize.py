"""Feature standardization stored as buffers, so a checkpoint carries it and serving takes raw inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """(x - mean) / std over the last axis; identity until `fit` is called."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Fit on raw rows (N, D); constant features keep std 1 so they do not blow up."""
        x = x.reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        std = x.std(0, unbiased=False)
        self.mean.copy_(x.mean(0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean
