"""Sequence instances for the multi-head attention model: a list of steps, each a list of numbers (or,
for a model tuned on a user's file, an object of numbers by feature name: `{"value": 0.3, "marker": 1}`).

Sequences of every request in a batch are sorted by length and run in passes of similar lengths, so
padding costs little and one long sequence does not inflate the work of many short ones.
"""

from __future__ import annotations

import json
import time
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from training.nn import Inputs, SequenceModel
from training.nn.sequence_model import FAMILY

from .answers import (
    BYTES_PER_NUMBER,
    BYTES_PER_STEP_ROW,
    CLASS_ANSWER_BYTES,
    HEAD_WEIGHT_MAC,
    NUMBER_ANSWER_BYTES,
    WEIGHT_DECIMALS,
    NoveltyScores,
    class_answers,
    ran,
)
from .errors import RequestError
from .numbers import NUMBER_TYPES, Bounds, all_numbers, by_name, is_table, preview, to_tensor
from .types import Cost, Limits, Ran


class SequenceAdapter:
    family = FAMILY
    per_head_weights = True  # layers x heads x steps x steps, when asked

    def __init__(self, model: SequenceModel, limits: Limits):
        self.model = model.eval()
        self.limits = limits
        config = model.config
        self.n_features, self.classes = config.in_features, config.out_features
        self.d, self.layers, self.heads, self.ff = config.d_model, config.n_layers, config.n_heads, config.ff_mult
        self.regression = config.task == "regression"
        self.names = config.feature_names or []
        self.labels = config.class_labels or list(range(config.out_features))
        self.bounds = Bounds.from_scaler(model.x_scaler, limits.max_abs_z, self.names)

    # parse

    def example(self) -> bytes:
        """A valid one-instance request body: one step at the training data's mean."""
        mean = self.model.x_scaler.mean.tolist()
        return json.dumps({"instances": [[dict(zip(self.names, mean)) if self.names else mean]]}).encode()

    def parse(self, instances: list) -> list[Tensor]:
        return [self.parse_sequence(item, f"instances[{i}]") for i, item in enumerate(instances)]

    def parse_sequence(self, item: Any, where: str) -> Tensor:
        """A list of steps, each a list of `n_features` numbers -> (T, D) float64."""
        if type(item) is not list:
            detail = f"{where} must be a list of steps, each a list of {self.n_features} numbers"
            raise RequestError("invalid instance", detail)
        if not item:
            raise RequestError("empty sequence", f"{where} has no steps")
        if len(item) > self.limits.max_steps:
            detail = f"{where} has {len(item)} steps; at most {self.limits.max_steps}"
            raise RequestError("sequence too long", detail, status=413)
        if self.names and any(type(step) is dict for step in item):
            item = [by_name(s, self.names, f"{where}[{t}]") if type(s) is dict else s for t, s in enumerate(item)]
        if is_table(item, self.n_features):  # the common case: numbers within range, checked without a tensor
            flat = list(chain.from_iterable(item))
            if self.bounds.contains(flat, self.n_features):
                return torch.tensor(flat, dtype=torch.float64).view(len(item), self.n_features)
        else:
            for t, step in enumerate(item):
                self.check_step(step, f"{where}[{t}]")
        x = to_tensor(item, where)
        self.bounds.check(x, where)
        return x

    def check_step(self, step: Any, where: str) -> None:
        values = [step] if type(step) in NUMBER_TYPES else step  # a bare number is a one-feature step
        if type(values) is not list or not all_numbers(values):
            detail = f"{where} must be a list of {self.n_features} numbers, got {preview(step)}"
            raise RequestError("invalid instance", detail)
        if len(values) != self.n_features:
            detail = f"{where} has {len(values)} features; the model takes {self.n_features}"
            raise RequestError("wrong feature count", detail)

    # price

    def sequence_mmac(self, steps: int, heads: bool = False) -> float:
        """Multiply-adds of one sequence: per layer, projections and feed-forward (T d^2) and attention (T^2 d)."""
        T, d = steps, self.d
        per_layer = T * (4 + 2 * self.ff) * d * d + 2 * T * T * d
        total = self.layers * per_layer + T * d * (self.n_features + d) + T * d * self.classes
        if heads:
            total += self.layers * self.heads * T * T * HEAD_WEIGHT_MAC
        return total / 1e6

    def cost(self, sequences: list[Tensor], explain: bool, heads: bool) -> Cost:
        lengths = [len(s) for s in sequences]
        mmac = sum(self.sequence_mmac(T, heads and explain) for T in lengths)
        per_prediction = (
            NUMBER_ANSWER_BYTES if self.regression else CLASS_ANSWER_BYTES + self.classes * BYTES_PER_NUMBER
        )
        size = len(lengths) * per_prediction
        if explain:
            size += sum(T * BYTES_PER_NUMBER for T in lengths)
            if heads:
                size += sum(self.layers * self.heads * T * (T * BYTES_PER_NUMBER + BYTES_PER_STEP_ROW) for T in lengths)
        return Cost(mmac, size)

    def budget_hint(self) -> str:
        longest = self.sequence_mmac(self.limits.max_steps)
        return f"about {int(self.limits.max_request_mmac / longest):,} sequences of {self.limits.max_steps} steps"

    # run

    @torch.no_grad()
    def run(self, batch: list[list[Tensor]], explain: bool, heads: bool, deadline: float) -> Ran:
        sequences = [s for request in batch for s in request]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        results: list[Any] = [None] * len(sequences)
        scores: list[float | None] = [None] * len(sequences)
        for chunk in self.passes([len(sequences[i]) for i in order], heads):
            if time.monotonic() > deadline:
                break
            index = order[chunk]
            answers, novelty_scores = self.forward([sequences[i] for i in index], explain, heads)
            for i, result, score in zip(index, answers, novelty_scores):
                results[i], scores[i] = result, score
        return ran(results, scores, None, [len(r) for r in batch])

    def passes(self, sorted_lengths: list[int], heads: bool) -> list[slice]:
        """Slices of the length-sorted sequences whose padded pass stays within the pass budget."""
        chunks, start = [], 0
        for end in range(1, len(sorted_lengths) + 1):
            padded = (end - start) * self.sequence_mmac(sorted_lengths[end - 1], heads)
            if end - start > 1 and padded > self.limits.max_pass_mmac:
                chunks.append(slice(start, end - 1))
                start = end - 1
        chunks.append(slice(start, len(sorted_lengths)))
        return chunks

    def forward(self, sequences: list[Tensor], explain: bool, heads: bool) -> tuple[list[Any], list[float | None]]:
        """A pass's answers and novelty scores. The pooling weights (B x T, cheap) are always computed: the
        regressor's novelty is their entropy; the blocks keep the fused kernel unless heads are asked for."""
        dtype = self.model.embed.weight.dtype
        device = self.model.embed.weight.device
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        inputs = Inputs(nn.utils.rnn.pad_sequence(sequences, batch_first=True).to(device, dtype), lengths)  # (N, T, D)
        outputs = FAMILY.predict(self.model, inputs, need_weights=True, head_weights=explain and heads)
        out, weights = outputs.out, outputs.weights
        predictions = out.tolist() if self.regression else class_answers(out, self.labels)
        scores = NoveltyScores.of(lambda: FAMILY.novelty(self.model, inputs, outputs), len(sequences))
        if not explain:
            return predictions, scores
        answers = [self.explanation(p, weights, i, int(n), heads) for i, (p, n) in enumerate(zip(predictions, lengths))]
        return answers, scores

    def explanation(self, prediction: Any, weights: dict[str, Tensor], i: int, n: int, heads: bool) -> dict:
        pooling = weights["pooling"][i, :n].double().round(decimals=WEIGHT_DECIMALS)
        explanation = {"prediction": prediction, "pooling_weights": pooling.tolist()}
        if heads:  # (L, H, T, T) cut to the valid steps
            head_weights = weights["heads"][i, :, :, :n, :n].double().round(decimals=WEIGHT_DECIMALS)
            explanation["head_weights"] = head_weights.tolist()
        return explanation
