"""The HTTP contract as plain functions, independent of TorchServe: parse + validate -> predict -> respond.

Request:  {"instances": [...], "heads": false}
Response: {"predictions": [...], "model": {...}}  or  {"explanations": [...], "model": {...}}
Error:    {"error": "<what>", "detail": "<which part is wrong and why>"} with a 4xx status.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.nn import NadarayaWatson

NUMBER_TYPES = (int, float)  # what JSON numbers decode to; `type(...) in` keeps bools (true/false) out


@dataclass(frozen=True)
class Limits:
    max_instances: int = 256  # per request
    max_steps: int = 1000  # per sequence
    top_keys: int = 5  # NW explanations list this many most-attended training points


class RequestError(ValueError):
    """A request the model cannot answer; `status` is the HTTP code to send back."""

    def __init__(self, error: str, detail: str, status: int = 400):
        super().__init__(f"{error}: {detail}")
        self.error, self.detail, self.status = error, detail, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


@dataclass
class Parsed:
    instances: list[list]  # validated numbers: [D] for NW, [T][D] for sequences
    heads: bool = False  # explanations: include per-head self-attention weights


# parse + validate


def decode_body(raw: Any) -> dict:
    """The request body as a dict, whatever form the server hands it over in."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("invalid body", "the body is not UTF-8 text") from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise RequestError("invalid JSON", f"the body is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise RequestError("invalid body", 'expected a JSON object like {"instances": [...]}')
    return raw


def parse_request(raw: Any, model: nn.Module, limits: Limits) -> Parsed:
    body = decode_body(raw)
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise RequestError("missing instances", 'the body needs an "instances" list')
    if not instances:
        raise RequestError("empty instances", '"instances" is empty: send at least one')
    if len(instances) > limits.max_instances:
        raise RequestError(
            "too many instances", f"{len(instances)} instances; at most {limits.max_instances} per request", status=413
        )
    heads = body.get("heads", False)
    if not isinstance(heads, bool):
        raise RequestError("invalid heads", '"heads" must be true or false')
    n_features = model.config.in_features
    # Validated in plain Python; tensors are built once per batch in `predict`.
    if isinstance(model, NadarayaWatson):
        return Parsed([parse_vector(item, n_features, f"instances[{i}]") for i, item in enumerate(instances)], heads)
    return Parsed(
        [parse_sequence(item, n_features, limits, f"instances[{i}]") for i, item in enumerate(instances)], heads
    )


def parse_vector(item: Any, n_features: int, where: str) -> list[float]:
    """A number (1-D models) or a list of `n_features` finite numbers."""
    values = [item] if is_number(item) else item
    if not isinstance(values, list) or not all(is_number(v) for v in values):
        shape = "a number or a list of numbers" if n_features == 1 else f"a list of {n_features} numbers"
        raise RequestError("invalid instance", f"{where} must be {shape}, got {json.dumps(item)[:80]}")
    if len(values) != n_features:
        raise RequestError("wrong feature count", f"{where} has {len(values)} features; the model takes {n_features}")
    if not all(math.isfinite(v) for v in values):
        raise RequestError("non-finite number", f"{where} contains NaN or infinity")
    return values


def parse_sequence(item: Any, n_features: int, limits: Limits, where: str) -> list[list[float]]:
    """A list of steps, each a list of `n_features` numbers."""
    if not isinstance(item, list):
        raise RequestError("invalid instance", f"{where} must be a list of steps, each a list of {n_features} numbers")
    if not item:
        raise RequestError("empty sequence", f"{where} has no steps")
    if len(item) > limits.max_steps:
        raise RequestError(
            "sequence too long", f"{where} has {len(item)} steps; at most {limits.max_steps}", status=413
        )
    if all(is_finite_vector(step, n_features) for step in item):  # the common case, checked cheaply
        return item
    return [parse_vector(step, n_features, f"{where}[{t}]") for t, step in enumerate(item)]  # names the bad step


def is_finite_vector(value: Any, n_features: int) -> bool:
    return (
        type(value) is list
        and len(value) == n_features
        and all(type(v) in NUMBER_TYPES and math.isfinite(v) for v in value)
    )


def is_number(value: Any) -> bool:
    return type(value) in NUMBER_TYPES


# predict


@torch.no_grad()
def predict(model: nn.Module, instances: list[list], *, explain: bool = False, heads: bool = False) -> list[Any]:
    """One forward pass over validated instances from any number of requests; one result per instance."""
    device = next(model.buffers()).device
    if isinstance(model, NadarayaWatson):
        x = torch.tensor(instances, dtype=torch.float32, device=device)  # (N, D)
        out, weights = model(x, need_weights=explain)  # (N,), (N, K)
        if not explain:
            return out.tolist()
        return [nw_explanation(model, v, w) for v, w in zip(out.tolist(), weights)]
    lengths = torch.tensor([len(s) for s in instances], device=device)
    sequences = [torch.tensor(s, dtype=torch.float32) for s in instances]
    x = nn.utils.rnn.pad_sequence(sequences, batch_first=True).to(device)  # (N, T, D)
    out, weights = model(x, lengths, need_weights=explain)
    predictions = [sequence_prediction(model, row) for row in out]
    if not explain:
        return predictions
    return [sequence_explanation(p, weights, i, int(n), heads) for i, (p, n) in enumerate(zip(predictions, lengths))]


def sequence_prediction(model: nn.Module, row: Tensor) -> Any:
    if model.config.task == "regression":
        return row.item()
    probabilities = torch.softmax(row.float(), dim=-1)
    return {"label": int(probabilities.argmax()), "probabilities": [round(float(p), 6) for p in probabilities]}


def nw_explanation(model: NadarayaWatson, prediction: float, weights: Tensor, top: int = Limits.top_keys) -> dict:
    keys = model.x_scaler.inverse(model.keys)  # raw training inputs (K, D)
    values = model.y_scaler.inverse(model.values[:, None]).squeeze(-1)  # raw training targets (K,)
    best = torch.topk(weights, min(top, weights.numel()))
    return {
        "prediction": prediction,
        "weights": [float(w) for w in weights],  # over the training keys, in stored order; sums to 1
        "top_keys": [
            {"index": int(i), "key": keys[i].tolist(), "value": float(values[i]), "weight": float(w)}
            for w, i in zip(best.values, best.indices)
        ],
    }


def sequence_explanation(prediction: Any, weights: dict[str, Tensor], i: int, n: int, heads: bool) -> dict:
    explanation = {"prediction": prediction, "pooling_weights": [float(w) for w in weights["pooling"][i, :n]]}
    if heads:  # (L, H, T, T) cut to the valid steps
        explanation["head_weights"] = weights["heads"][i, :, :, :n, :n].tolist()
    return explanation


# respond


def respond(results: list[Any], explain: bool, model_info: dict) -> dict:
    return {"explanations" if explain else "predictions": results, "model": model_info}


def answer_batch(
    bodies: list[Any], explain: list[bool], model: nn.Module, limits: Limits, model_info: dict
) -> list[tuple[int, dict]]:
    """(status, JSON body) per request. A bad request fails alone; the valid ones share one forward pass
    (one for predictions, one for explanations)."""
    answers: list[tuple[int, dict] | None] = [None] * len(bodies)
    parsed: dict[int, Parsed] = {}
    for i, raw in enumerate(bodies):
        try:
            parsed[i] = parse_request(raw, model, limits)
        except RequestError as error:
            answers[i] = (error.status, error.body())
    for wants_explanation in (False, True):
        group = [i for i in parsed if explain[i] == wants_explanation]
        if not group:
            continue
        instances = [x for i in group for x in parsed[i].instances]
        try:
            results = predict(model, instances, explain=wants_explanation, heads=any(parsed[i].heads for i in group))
        except Exception as error:  # a bug or resource exhaustion: answer, never kill the worker
            for i in group:
                answers[i] = (500, {"error": "internal error", "detail": f"{type(error).__name__}: {error}"})
            continue
        start = 0
        for i in group:
            chunk = results[start : start + len(parsed[i].instances)]
            start += len(chunk)
            if wants_explanation and not parsed[i].heads:
                chunk = [{k: v for k, v in item.items() if k != "head_weights"} for item in chunk]
            answers[i] = (200, respond(chunk, wants_explanation, model_info))
    return answers
