"""Tabular instances for the Nadaraya-Watson model: a number (1-D), a list of numbers, or (for a model
tuned on a user's file) an object of numbers by feature name, `{"age": 50, "bmi": 31.2}`, per instance.

Explanations name each most-attended training key by its row in the file, when the model was tuned on one; a
model of prototypes (large data) names for each most-attended prototype how many training rows it stands for
and the rows nearest its centre (file rows, or positions among the training rows for a built-in data set).

What an explanation carries of the training rows is the archive's `explain_keys` setting:
- `values`: every key's weight, and each top key's weight, inputs and target (and a trend's share);
- `index`: the top keys' identities in rank order, no number: a weight is exp(-|x - k|^2 / 2) up to the
  query's normalizer, so two weights' log-ratio is linear in the query and a least-squares fit over chosen
  queries gives back every key's inputs, then prediction = sum_i w_i y_i every target (`tests/attacks.py`);
  rounding the weights coarsely only adds noise to that fit, so none are sent;
- `none`: the prediction alone.

The model is served in float64: NW is small, and double precision keeps the fused prediction path and
the direct path behind explanations in agreement over the whole accepted input range.
"""

from __future__ import annotations

import json
import time
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from training.nn import Inputs, NadarayaWatson
from training.nn.nadaraya_watson import FAMILY

from .answers import (
    BYTES_PER_NUMBER,
    EXPLANATION_BYTES,
    KEY_FEATURE_BYTES,
    NUMBER_ANSWER_BYTES,
    TOP_KEY_BYTES,
    WEIGHT_DECIMALS,
    NoveltyScores,
    class_answers,
    ran,
)
from .errors import RequestError
from .numbers import Bounds, all_numbers, by_name, is_number, is_table, preview, to_tensor
from .types import Cost, Limits, Ran


class TabularAdapter:
    family = FAMILY
    per_head_weights = False

    def __init__(self, model: NadarayaWatson, limits: Limits):
        self.model = model.double().eval()
        self.limits = limits
        config = model.config
        self.n_features, self.n_keys, self.n_classes = config.in_features, config.n_keys, config.n_classes
        self.names = config.feature_names or []
        self.labels = config.class_labels or list(range(config.n_classes))
        statistics = limits.explain_keys == "values"  # a refusal states the range's numbers only where values leave
        self.bounds = Bounds.from_scaler(model.x_scaler, limits.max_abs_z, self.names, statistics=statistics)
        # Raw training inputs and targets, for naming the most attended keys in explanations.
        self.keys = model.x_scaler.inverse(model.keys.detach())  # (K, D)
        self.key_low, self.key_high = self.keys.min(0).values, self.keys.max(0).values  # the training data's range
        self.device = model.keys.device
        self.pass_rows: dict[tuple[bool, bool], int] = {}  # (explain, heads) -> rows per forward pass
        if self.n_classes:
            self.values = [self.labels[c] for c in model.values.argmax(-1).tolist()]  # (K,) labels
        else:
            values = model.y_scaler.inverse(model.values.detach()[:, None]).squeeze(-1).tolist()  # (K,)
            self.values = [float(f"{v:.7g}") for v in values]  # float32 targets: 7 significant digits
        self.rows = config.key_rows
        # Prototypes (large data): how many training rows each stands for, and the rows nearest its centre.
        self.stands_for = model.counts.long().tolist() if config.prototypes else None
        self.prototype_rows = config.prototype_rows if config.prototypes else None
        self.trend = config.trend  # regression along a linear trend: the prediction = pooled values + trend
        if self.trend:
            self.raw_values = model.y_scaler.inverse(model.values.detach()[:, None]).squeeze(-1)  # (K,), float64

    def example(self) -> bytes:
        """A valid one-instance request body: the training data's mean (by name, when features have names)."""
        mean = self.model.x_scaler.mean.tolist()
        return json.dumps({"instances": [dict(zip(self.names, mean)) if self.names else mean]}).encode()

    def parse(self, instances: list) -> list[list]:
        """Rows of numbers within the accepted range; tensors are built once per batch in `run`."""
        if self.n_features == 1 and all_numbers(instances):  # numbers, for a 1-D model
            rows, values = [[value] for value in instances], instances
        else:
            if is_table(instances, self.n_features):  # lists of numbers of the right length: checked in C
                rows = instances
            else:  # objects by feature name, or something to name as wrong
                rows = [self.parse_vector(item, f"instances[{i}]") for i, item in enumerate(instances)]
            values = list(chain.from_iterable(rows))
        if not self.bounds.contains(values, self.n_features):  # no tensor per request
            self.bounds.check(to_tensor(rows, "instances"), "instances")  # names the offending value
        return rows

    def parse_vector(self, item: Any, where: str) -> list:
        """A number (1-D models), a list of `n_features` numbers, or an object of numbers by feature name."""
        if type(item) is dict:
            return self.parse_named(item, where)
        values = [item] if is_number(item) else item
        if type(values) is not list or not all_numbers(values):
            shape = "a number or a list of numbers" if self.n_features == 1 else f"a list of {self.n_features} numbers"
            raise RequestError("invalid instance", f"{where} must be {shape}, got {preview(item)}")
        if len(values) != self.n_features:
            detail = f"{where} has {len(values)} features; the model takes {self.n_features}"
            raise RequestError("wrong feature count", detail)
        return values

    def parse_named(self, item: dict, where: str) -> list:
        return by_name(item, self.names, where)

    def cost(self, x: Tensor, explain: bool, heads: bool) -> Cost:
        n, K, D, V = len(x), self.n_keys, self.n_features, max(1, self.n_classes) + self.n_features * self.trend
        if not explain:
            return Cost(n * K * (D + V) * 2 / 1e6, n * (NUMBER_ANSWER_BYTES + (V - 1) * BYTES_PER_NUMBER))
        return Cost(n * K * (3 * D + 3 + V) / 1e6, n * self.explanation_bytes())

    def explanation_bytes(self) -> int:
        """An explanation's estimated size: what `explain_keys` lets it carry."""
        revealed, top = self.limits.explain_keys, self.limits.top_keys
        if revealed == "values":
            key = TOP_KEY_BYTES + self.n_features * KEY_FEATURE_BYTES
            return EXPLANATION_BYTES + self.n_keys * BYTES_PER_NUMBER + top * key
        return EXPLANATION_BYTES + (top * TOP_KEY_BYTES if revealed == "index" else 0)

    def rows_per_pass(self, explain: bool, heads: bool) -> int:
        """As many rows as one forward pass may hold, priced by the same `cost` that admitted the requests."""
        if (explain, heads) not in self.pass_rows:
            per_row = self.cost(torch.zeros(1, self.n_features), explain, heads).mmac
            self.pass_rows[explain, heads] = max(1, int(self.limits.max_pass_mmac / per_row))
        return self.pass_rows[explain, heads]

    def budget_hint(self) -> str:
        per_instance = self.cost(torch.zeros(1, self.n_features), explain=True, heads=False).mmac
        return f"about {int(self.limits.max_request_mmac / per_instance):,} explained instances of this model"

    @torch.no_grad()
    def run(self, batch: list[list], explain: bool, heads: bool, deadline: float) -> Ran:
        rows = [row for request in batch for row in request]
        x = torch.tensor(rows, dtype=torch.float64, device=self.device)  # (N, D)
        rows_per_pass = self.rows_per_pass(explain, heads)
        results: list = []
        scores: list = []
        for start in range(0, len(x), rows_per_pass):
            if time.monotonic() > deadline:
                break
            inputs = Inputs(x[start : start + rows_per_pass])  # (n, D)
            outputs = FAMILY.predict(self.model, inputs, need_weights=explain)  # (n,) or (n, C); weights (n, K)
            predictions = self.predictions(outputs.out)
            if explain:
                results += [self.explanation(p, w) for p, w in zip(predictions, outputs.weights)]
            else:
                results += predictions
            scores += NoveltyScores.of(lambda: FAMILY.novelty(self.model, inputs, outputs), len(inputs.x))
        beyond = ((x < self.key_low) | (x > self.key_high)).any(-1).tolist()  # (N,)
        return ran(results, scores, beyond, [len(b) for b in batch])

    def predictions(self, out: Tensor) -> list:
        """Per row, a number (regression), or the class label and probabilities (classification: `out` holds log p,
        whose softmax is p)."""
        return out.tolist() if not self.n_classes else class_answers(out, self.labels)

    def explanation(self, prediction: Any, weights: Tensor) -> dict:
        """The prediction and as much of the training keys behind it as `explain_keys` reveals (module docstring)."""
        revealed = self.limits.explain_keys
        if revealed == "none":
            return {"prediction": prediction, "revealed": revealed}
        top = torch.topk(weights, min(self.limits.top_keys, weights.numel())).indices.tolist()  # most attended first
        if revealed == "index":
            return {"prediction": prediction, "top_keys": [self.key_identity(i) for i in top], "revealed": revealed}
        weights = weights.round(decimals=WEIGHT_DECIMALS)
        trend = {"trend": self.trend_term(prediction, weights)} if self.trend else {}
        return {
            "prediction": prediction,
            "weights": weights.tolist(),  # over the training keys, in stored order; sums to 1
            "top_keys": [self.key_values(i, float(weights[i])) for i in top],
            "revealed": revealed,
        } | trend

    def trend_term(self, prediction: Any, weights: Tensor) -> float:
        """With a linear trend, what it adds to the keys' weighted values: prediction - sum_i weight_i value_i."""
        return prediction - float(weights @ self.raw_values)

    def key_identity(self, i: int) -> dict:
        """A training key by identity alone: its place among the keys, and its row in the file if known (a
        prototype: how many rows it stands for and the rows nearest its centre)."""
        if self.stands_for is not None:
            return {"index": i, "stands_for": self.stands_for[i], "nearest_rows": self.prototype_rows[i]}
        return {"index": i} | ({"row": self.rows[i]} if self.rows else {})

    def key_values(self, i: int, weight: float) -> dict:
        """A training key with its weight, inputs and target (`explain_keys` "values")."""
        inputs = [float(f"{v:.7g}") for v in self.keys[i].tolist()]  # float32 keys: 7 significant digits
        return self.key_identity(i) | {"key": inputs, "value": self.values[i], "weight": weight}
