"""Tabular instances for the Nadaraya-Watson model: a number (1-D) or a list of numbers per instance.

The model is served in float64: NW is small, and double precision keeps the fused prediction path and
the direct path behind explanations in agreement over the whole accepted input range.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import Tensor

from training.nn import NadarayaWatson

from .contract import Cost, Limits
from .errors import RequestError
from .numbers import Bounds, is_number, preview, to_tensor

BYTES_PER_NUMBER = 12  # a rounded weight and its separator, in the JSON answer
WEIGHT_DECIMALS = 7  # explanations' weights are rounded: ample for weights in [0, 1], and half the bytes


class TabularAdapter:
    def __init__(self, model: NadarayaWatson, limits: Limits):
        self.model = model.double().eval()
        self.limits = limits
        self.n_features, self.n_keys = model.config.in_features, model.config.n_keys
        self.bounds = Bounds.from_scaler(model.x_scaler, limits.max_abs_z)
        # Raw training inputs and targets, for naming the most attended keys in explanations.
        self.keys = model.x_scaler.inverse(model.keys)  # (K, D)
        self.values = model.y_scaler.inverse(model.values[:, None]).squeeze(-1)  # (K,)

    def example(self) -> bytes:
        """A valid one-instance request body: the training data's mean."""
        return json.dumps({"instances": [self.model.x_scaler.mean.tolist()]}).encode()

    def parse(self, instances: list) -> Tensor:
        rows = [self.parse_vector(item, f"instances[{i}]") for i, item in enumerate(instances)]
        x = to_tensor(rows, "instances")  # (N, D)
        self.bounds.check(x, "instances")
        return x

    def parse_vector(self, item: Any, where: str) -> list:
        """A number (1-D models) or a list of `n_features` numbers."""
        values = [item] if is_number(item) else item
        if type(values) is not list or not all(is_number(v) for v in values):
            shape = "a number or a list of numbers" if self.n_features == 1 else f"a list of {self.n_features} numbers"
            raise RequestError("invalid instance", f"{where} must be {shape}, got {preview(item)}")
        if len(values) != self.n_features:
            detail = f"{where} has {len(values)} features; the model takes {self.n_features}"
            raise RequestError("wrong feature count", detail)
        return values

    def cost(self, x: Tensor, explain: bool, heads: bool) -> Cost:
        n, K, D = len(x), self.n_keys, self.n_features
        if not explain:
            return Cost(n * K * (D + 1) * 2 / 1e6, n * 30)
        per_instance = K * BYTES_PER_NUMBER + self.limits.top_keys * (60 + D * 25) + 60
        return Cost(n * K * (3 * D + 4) / 1e6, n * per_instance)

    def budget_hint(self) -> str:
        per_instance = self.cost(torch.zeros(1, self.n_features), explain=True, heads=False).mmac
        return f"about {int(self.limits.max_request_mmac / per_instance):,} explained instances of this model"

    @torch.no_grad()
    def run(self, batch: list[Tensor], explain: bool, heads: bool, deadline: float) -> list[list | None]:
        x = torch.cat(batch).to(self.model.keys.device)  # (N, D)
        rows_per_pass = max(1, int(self.limits.max_pass_mmac * 1e6 / (self.n_keys * (3 * self.n_features + 4))))
        results: list = []
        for start in range(0, len(x), rows_per_pass):
            if time.monotonic() > deadline:
                break
            out, weights = self.model(x[start : start + rows_per_pass], need_weights=explain)  # (n,), (n, K)
            if explain:
                results += [self.explanation(p, w) for p, w in zip(out.tolist(), weights)]
            else:
                results += out.tolist()
        return split_per_request(results, [len(b) for b in batch])

    def explanation(self, prediction: float, weights: Tensor) -> dict:
        weights = weights.round(decimals=WEIGHT_DECIMALS)
        best = torch.topk(weights, min(self.limits.top_keys, weights.numel()))
        return {
            "prediction": prediction,
            "weights": weights.tolist(),  # over the training keys, in stored order; sums to 1
            "top_keys": [
                {"index": int(i), "key": self.keys[i].tolist(), "value": float(self.values[i]), "weight": float(w)}
                for w, i in zip(best.values, best.indices)
            ],
        }


def split_per_request(results: list, counts: list[int]) -> list[list | None]:
    """Cut a flat list of per-instance results back into requests; a request left unfinished gets None."""
    results = results + [None] * (sum(counts) - len(results))
    out, start = [], 0
    for n in counts:
        chunk = results[start : start + n]
        out.append(None if any(r is None for r in chunk) else chunk)
        start += n
    return out
