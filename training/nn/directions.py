"""Where a kernel's learned parts start: the keys' least-squares slope (a linear trend) and an orthonormal basis of
the input space, most telling directions first (a linear map's rows, `NWConfig.rank`)."""

from __future__ import annotations

import torch
from torch import Tensor


def least_squares(keys: Tensor, values: Tensor, ridge: float = 1e-3) -> Tensor:
    """The slope (D, V) of the keys' (K, D) ridge least-squares fit of the values (K,) or (K, V), intercept aside."""
    n, d = keys.shape
    x = keys - keys.mean(0)  # (K, D)
    v = values.reshape(n, -1) - values.reshape(n, -1).mean(0)  # (K, V)
    return torch.linalg.solve(x.T @ x + ridge * n * torch.eye(d, dtype=x.dtype, device=x.device), x.T @ v)


def initial_directions(keys: Tensor, values: Tensor, ridge: float = 1e-3) -> Tensor:
    """An orthonormal basis (D, D) of the input space, most telling directions first: those of the keys'
    (ridge) least-squares fit of the values, then the principal directions of what they leave."""
    d = keys.shape[1]
    x = keys - keys.mean(0)  # (K, D)
    fitted = torch.linalg.svd(least_squares(keys, values, ridge), full_matrices=False).U  # (D, min(D, V))
    rest = x - x @ fitted @ fitted.T  # (K, D), the keys without the fitted directions
    principal = torch.linalg.svd(rest, full_matrices=True).Vh[: d - fitted.shape[1]]  # (D - s, D)
    return torch.linalg.qr(torch.cat([fitted, principal.T], dim=1)).Q.T  # (D, D), Gram-Schmidt in that order
