"""Image instances for the pixel self-attention model (`pixel`): each instance an image of raw pixel values.

An instance is H rows of W numbers (a one-channel model; digits: 8 rows of 8 values in 0..16), C channels
of such rows, or the same C*H*W numbers flat, row by row. Every value must lie in the range of the
training images' pixels; anything else is refused with its position.

Prediction: the class label and its probabilities. Explanation: the prediction; gamma, the learned weight
of the attention block's output in `gamma * attention + input`; and for each query pixel [row, col] the
attention map over the image (H rows of W weights summing to 1): where that pixel looks. The query pixels
are the request's `"queries": [[row, col], ...]` (the same for every instance), or else each image's
brightest pixel (the first in reading order). `attended` is the attention each pixel receives, averaged
over every query pixel of the image (H x W, sums to 1).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from training.nn import Inputs, PixelModel
from training.nn.pixel import FAMILY

from .answers import (
    BYTES_PER_NUMBER,
    CLASS_ANSWER_BYTES,
    EXPLANATION_BYTES,
    HEAD_WEIGHT_MAC,
    MAP_SEPARATOR_BYTES,
    WEIGHT_DECIMALS,
    NoveltyScores,
    class_answers,
    ran,
)
from .errors import RequestError
from .numbers import NUMBER_TYPES, Bounds, all_numbers, is_table, preview, to_tensor
from .types import Cost, Limits, Ran


@dataclass
class Images:
    """One request's validated images (C, H, W) float64 and its query pixels (None: each image's brightest)."""

    images: list[Tensor]
    queries: list[tuple[int, int]] | None = None


class ImageAdapter:
    family = FAMILY
    per_head_weights = False

    def __init__(self, model: PixelModel, limits: Limits):
        self.model = model.eval()
        self.limits = limits
        config = model.config
        self.C, self.H, self.W = config.in_channels, config.height, config.width
        self.classes = config.n_classes
        self.labels = config.class_labels or list(range(config.n_classes))
        self.shape = (
            f"{self.H} rows of {self.W} numbers" if self.C == 1 else f"{self.C} channels of {self.H} x {self.W}"
        )
        self.shape += f" (or {self.C * self.H * self.W} numbers, row by row)"
        self.bounds = pixel_bounds(model, limits.max_abs_z)

    # parse

    def example(self) -> bytes:
        """A valid one-instance request body: a blank image."""
        blank = float(self.bounds.low[0]) if torch.isfinite(self.bounds.low[0]) else 0.0
        image = [[blank] * self.W for _ in range(self.H)]
        return json.dumps({"instances": [image if self.C == 1 else [image] * self.C]}).encode()

    def parse(self, instances: list) -> Images:
        return Images([self.parse_image(item, f"instances[{i}]") for i, item in enumerate(instances)])

    def parse_image(self, item: Any, where: str) -> Tensor:
        """Nested rows (or channels of rows), or flat numbers -> (C, H, W) float64 within the pixel range."""
        if type(item) is not list or not item:
            raise RequestError("invalid instance", f"{where} must be an image: {self.shape}, got {preview(item)}")
        if type(item[0]) in NUMBER_TYPES:  # flat, row by row
            self.check_numbers(item, where, self.C * self.H * self.W, "numbers")
        else:
            self.check_nested(item, where, [self.H, self.W] if self.C == 1 else [self.C, self.H, self.W])
        values = to_tensor(item, where)
        self.bounds.check(values[..., None], where)  # (..., 1): one range for every value, positions as sent
        return values.reshape(self.C, self.H, self.W)

    def check_nested(self, item: Any, where: str, sizes: list[int]) -> None:
        """`item` is lists nested len(sizes) deep with these lengths, numbers at the bottom; else say where not."""
        name = ["channel", "row", "pixel"][-len(sizes)]
        if type(item) is not list:
            raise RequestError("invalid instance", f"{where} must be a list of {sizes[0]} {name}s, got {preview(item)}")
        if len(sizes) == 1:
            self.check_numbers(item, where, sizes[0], "pixels")
            return
        if len(item) != sizes[0]:
            raise RequestError("wrong image size", f"{where} has {len(item)} {name}s; the model takes {self.shape}")
        if len(sizes) == 2 and is_table(item, sizes[1]):  # the common case: rows of numbers, checked in C
            return
        for j, part in enumerate(item):
            self.check_nested(part, f"{where}[{j}]", sizes[1:])

    def check_numbers(self, values: list, where: str, size: int, name: str) -> None:
        if len(values) != size:
            raise RequestError("wrong image size", f"{where} has {len(values)} {name}; the model takes {self.shape}")
        if all_numbers(values):
            return
        for j, v in enumerate(values):
            if type(v) not in NUMBER_TYPES:
                raise RequestError("invalid instance", f"{where}[{j}] must be a number, got {preview(v)}")

    def parse_options(self, items: Images, body: dict, explain: bool) -> Images:
        """The request's "queries" (explanations only): a list of [row, col] pixels of the image."""
        queries = body.get("queries")
        if not explain or queries is None:
            return items
        if type(queries) is not list or not queries:
            raise RequestError(
                "invalid queries", f'"queries" must be a non-empty list of [row, col], got {preview(queries)}'
            )
        if len(queries) > self.H * self.W:
            detail = f'"queries" has {len(queries)} pixels; an image has {self.H * self.W}'
            raise RequestError("too many queries", detail, status=413)
        for i, query in enumerate(queries):
            if not (type(query) is list and len(query) == 2 and all(type(v) is int for v in query)):
                detail = f"queries[{i}] must be [row, col], two integers, got {preview(query)}"
                raise RequestError("invalid queries", detail)
            if not (0 <= query[0] < self.H and 0 <= query[1] < self.W):
                detail = f"queries[{i}] is {query}; rows are 0..{self.H - 1} and columns 0..{self.W - 1}"
                raise RequestError("invalid queries", detail)
        return Images(items.images, [(row, col) for row, col in queries])

    # price

    def image_mmac(self, explain: bool = False) -> float:
        """Multiply-adds of one image: the convolutions, the block's 1x1 convolutions and attention, the head;
        explanations also materialize the N x N attention weights."""
        c, N = self.model.config, self.H * self.W
        C, inner = c.channels, max(1, c.channels // c.reduction)
        convs = N * 9 * C * (c.in_channels + (c.depth - 1) * C)
        attention = N * C * (2 * inner + C) + N * N * (inner + C)
        weights = N * N * HEAD_WEIGHT_MAC if explain else 0
        return (convs + attention + N * C * self.classes + weights) / 1e6

    def cost(self, items: Images, explain: bool, heads: bool) -> Cost:
        n, N = len(items.images), self.H * self.W
        size = n * (CLASS_ANSWER_BYTES + self.classes * BYTES_PER_NUMBER)
        if explain:
            maps = 1 + (len(items.queries) if items.queries else 1)  # the query maps and `attended`
            size += n * (EXPLANATION_BYTES + maps * N * BYTES_PER_NUMBER + (maps - 1) * MAP_SEPARATOR_BYTES)
        return Cost(n * self.image_mmac(explain), size)

    def budget_hint(self) -> str:
        return f"about {int(self.limits.max_request_mmac / self.image_mmac(True)):,} explained images"

    # run

    @torch.no_grad()
    def run(self, batch: list[Images], explain: bool, heads: bool, deadline: float) -> Ran:
        items = [(image, request.queries) for request in batch for image in request.images]
        per_pass = max(1, int(self.limits.max_pass_mmac / self.image_mmac(explain)))
        results: list[Any] = []
        scores: list[float | None] = []
        for start in range(0, len(items), per_pass):
            if time.monotonic() > deadline:
                break
            answers, novelty_scores = self.forward(items[start : start + per_pass], explain)
            results += answers
            scores += novelty_scores
        return ran(results, scores, None, [len(request.images) for request in batch])

    def forward(self, items: list[tuple[Tensor, list | None]], explain: bool) -> tuple[list[Any], list[float | None]]:
        """A pass's answers and novelty scores (each answer's entropy)."""
        weight = self.model.head.weight
        inputs = Inputs(torch.stack([image for image, _ in items]).to(weight.device, weight.dtype))  # (B, C, H, W)
        outputs = FAMILY.predict(self.model, inputs, need_weights=explain)
        logits, weights = outputs.out, outputs.weights  # (B, classes), {"attention": (B, N, N), "gamma"}
        predictions = class_answers(logits, self.labels)
        scores = NoveltyScores.of(lambda: FAMILY.novelty(self.model, inputs, outputs), len(items))
        if not explain:
            return predictions, scores
        gamma = float(weights["gamma"])
        answers = [
            self.explanation(p, weights["attention"][i], gamma, queries or [brightest(image)])
            for i, (p, (image, queries)) in enumerate(zip(predictions, items))
        ]
        return answers, scores

    def explanation(self, prediction: dict, attention: Tensor, gamma: float, queries: list) -> dict:
        """`attention` (N, N): query position x key position, positions numbered row by row."""
        attention = attention.double().cpu()
        maps = attention[[row * self.W + col for row, col in queries]].reshape(-1, self.H, self.W)  # (Q, H, W)
        return {
            "prediction": prediction,
            "gamma": gamma,
            "queries": [list(q) for q in queries],
            "attention": maps.round(decimals=WEIGHT_DECIMALS).tolist(),  # per query: H x W, sums to 1
            "attended": attention.mean(0).reshape(self.H, self.W).round(decimals=WEIGHT_DECIMALS).tolist(),
        }


def pixel_bounds(model: PixelModel, max_abs_z: float) -> Bounds:
    """The training pixels' range (one range for every channel); a model without one: mean ± max_abs_z std."""
    if model.config.value_range is not None:
        low, high = model.config.value_range
        why = "the training images' pixel range"
    else:
        scaler = Bounds.from_scaler(model.x_scaler, max_abs_z)
        low, high = float(scaler.low.min()), float(scaler.high.max())
        why = f"the training pixels' mean ± {max_abs_z:g} standard deviations"
    one = torch.ones(1, dtype=torch.float64)
    return Bounds(low * one, high * one, max_abs_z, ("pixel",), why)


def brightest(image: Tensor) -> tuple[int, int]:
    """The (row, col) of an image's (C, H, W) brightest pixel, channels summed; the first in reading order."""
    picture = image.sum(0)  # (H, W)
    index = int(torch.argmax(picture.flatten()))  # the first maximum, row by row
    return index // picture.shape[1], index % picture.shape[1]
